"""The `tailprompt` command: start-up imports, the command table, the parser of each command."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tailprompt import cli
from tailprompt.cli import COMMANDS, build_parser, invoked_command
from tailprompt.registry import UnknownNameError

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


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("argv, message", [
    (["predict"], "the following arguments are required"),
    (["predict", "--run", "r", "img", "--top-k", "x"], "argument --top-k: invalid int value: 'x'"),
    (["report", "runs", "--format", "docx"], "argument --format: invalid choice: 'docx'"),
    (["data", "sample", "--root", "r"], "the following arguments are required: --dataset"),
    (["list", "nosuch"], "invalid choice: 'nosuch'"),
])
def test_usage_errors_are_one_line_naming_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 2
    (line,) = _stderr_lines(capsys)
    assert line.startswith(f"tailprompt {argv[0]}") and message in line and "--help" in line


def _failing_list(monkeypatch, error: BaseException) -> None:
    import tailprompt.commands.list_components as module

    def run(args):
        raise error

    monkeypatch.setattr(module, "run", run)


def test_an_unexpected_error_is_still_one_line_and_v_shows_the_traceback(monkeypatch, capsys):
    _failing_list(monkeypatch, RuntimeError("boom\n  at some depth"))
    assert cli.main(["list"]) == 1
    (line,) = _stderr_lines(capsys)
    assert "tailprompt list: error: RuntimeError: boom at some depth" in line and "-v" in line
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["-v", "list"])


def test_an_unknown_name_is_a_user_error_and_a_bare_key_error_a_bug(monkeypatch, capsys):
    def run_in_user_errors(error):
        def run(args):
            with cli.user_errors():
                raise error

        monkeypatch.setattr(importlib.import_module("tailprompt.commands.list_components"), "run", run)
        return cli.main(["list"])

    assert run_in_user_errors(UnknownNameError("unknown learner 'cop'; valid names: coop")) == 2
    assert _stderr_lines(capsys) == ["tailprompt list: error: unknown learner 'cop'; valid names: coop"]
    assert run_in_user_errors(KeyError("timings")) == 1  # a lookup in the code, not the user's name
    (line,) = _stderr_lines(capsys)
    assert "KeyError: 'timings'" in line and "unexpected" in line


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    _failing_list(monkeypatch, KeyboardInterrupt())
    assert cli.main(["list"]) == 130
    assert _stderr_lines(capsys) == ["tailprompt list: interrupted"]


def test_library_warnings_print_as_one_line_once_during_a_command():
    # A fresh interpreter: pytest records warnings instead of printing them.
    code = (
        "import sys, warnings\n"
        "import tailprompt.commands.list_components as module\n"
        "def run(args):\n"
        "    for _ in range(2):  # the same warning again after a filter change, as a learner built twice gives\n"
        "        warnings.warn(\"prompt_depth=9 exceeds\\nthe backbone's 3 blocks\", UserWarning)\n"
        "        with warnings.catch_warnings():\n"
        "            warnings.simplefilter('ignore')\n"
        "    warnings.warn('another one', UserWarning)\n"
        "    return 0\n"
        "module.run = run\n"
        "from tailprompt.cli import main\n"
        "before = warnings.formatwarning\n"
        "code = main(['list'])\n"
        "assert warnings.formatwarning is before\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    assert out.stderr.splitlines() == ["warning: prompt_depth=9 exceeds the backbone's 3 blocks",
                                       "warning: another one"]


@pytest.mark.parametrize("module", ["tailprompt", "tailprompt.cli"])
def test_both_module_entry_points_run_the_cli(module):
    # benchmarks/ and torchrun start the CLI as a module; one of them once returned 0 having done nothing.
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: tailprompt" in out.stdout
