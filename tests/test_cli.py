"""The `tailprompt` command: start-up imports, the command table, the parser of each command."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tailprompt import cli
from tailprompt.cli import COMMANDS, build_parser, invoked_command

HEAVY = ("torch", "open_clip", "torchvision", "numpy")
SRC = Path(cli.__file__).resolve().parents[1]


def _subparser_help(parser: argparse.ArgumentParser, name: str) -> str | None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(a.help for a in sub._choices_actions if a.dest == name)


def test_building_the_parsers_imports_no_torch():
    # A fresh interpreter: this test process has torch loaded already. pretrain-embedded reads its
    # defaults from the pretraining config, which lives next to the torch code; its parser is built
    # only for `tailprompt pretrain-embedded ...`.
    light = [name for name in COMMANDS if name != "pretrain-embedded"]
    code = (
        "import sys\n"
        "from tailprompt.cli import build_parser\n"
        "build_parser()\n"
        f"for name in {light!r}: build_parser(name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_builds_and_the_listing_shows_its_own_help(name):
    parser = build_parser(name)
    assert _subparser_help(parser, name) == COMMANDS[name].help  # the module passes the table's text
    assert _subparser_help(build_parser(), name) == COMMANDS[name].help


def test_the_invoked_command_is_the_first_command_token():
    assert invoked_command(["-v", "train", "--config", "list"]) == "train"
    assert invoked_command(["--help"]) is None
    assert invoked_command(["convert-weights", "a.pt", "b.safetensors"]) == "convert-weights"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_choices_spelled_out_in_the_commands_match_the_library():
    from tailprompt.commands.data import PROFILES
    from tailprompt.commands.report import FORMATS, LAYOUTS
    from tailprompt.data.sampling import PROFILES as SAMPLING_PROFILES
    from tailprompt.report import FORMATS as REPORT_FORMATS
    from tailprompt.report.layouts import LAYOUTS as REPORT_LAYOUTS

    assert PROFILES == SAMPLING_PROFILES and FORMATS == REPORT_FORMATS and LAYOUTS == tuple(REPORT_LAYOUTS)
