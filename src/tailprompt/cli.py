"""The `tailprompt` command: argparse subcommands, one module each under `tailprompt.commands`.

Start-up stays under a second: `tailprompt --help` imports no command module (the listing comes from
`COMMANDS`), and `tailprompt CMD ...` imports only CMD's module, whose own imports of torch and open_clip
(seconds) wait inside its `run`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

from tailprompt import __version__
from tailprompt.errors import UserError

__all__ = ["UserError", "build_parser", "main", "user_errors"]


@dataclass(frozen=True)
class Command:
    """A subcommand: its module under tailprompt.commands (which defines `add_parser(subparsers)`) and the
    line `tailprompt --help` shows for it (the same text the module passes as `help=`; a test keeps them equal)."""

    module: str
    help: str


# In --help order.
COMMANDS: dict[str, Command] = {
    "train": Command("train", "train one run (learner + objectives + protocol) and write runs/<run_id>/"),
    "eval": Command("eval", "evaluate a run's prompts, or a released reference checkpoint, on a dataset"),
    "predict": Command("predict", "label images with a run's prompts (top-k classes and probabilities per image)"),
    "export": Command(
        "export",
        "write a run's prompts as one self-describing .safetensors file (docs/export.md loads it in open_clip)",
    ),
    "inspect": Command(
        "inspect",
        "show a run's context vectors as nearest words, their norms, and how far the class features moved",
    ),
    "sweep": Command("sweep", "run a grid of runs (methods x datasets x tau x seeds x any key), resumable"),
    "demo": Command(
        "demo",
        "run base-to-new on the embedded world for the *_coop methods at 3 imbalance ratios, 2 seeds, and report",
    ),
    "list": Command("list_components", "list presets, learners, objectives, training hooks, datasets and protocols"),
    "report": Command("report", "tables and plots from a runs folder"),
    "pretrain-embedded": Command(
        "pretrain_embedded",
        "pretrain the embedded tiny CLIP (or, --vision vit, its distilled ViT twin) on the procedural world "
        "(rebuilds the shipped weights)",
    ),
    "convert-weights": Command(
        "convert_weights", "convert a CLIP checkpoint (OpenAI TorchScript .pt, state dict) to .safetensors"
    ),
    "data": Command("data", "check dataset folders, sample few-shot training sets"),
    "features": Command("features", "precompute cached image features (eval view + augmented views)"),
}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors that bad files and values raise into `UserError`s (one line, exit 2); the library's own
    (`ConfigError`, `DatasetError`, `BackboneError`, ...) already are."""
    try:
        yield
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the option (exit code 2), like every other
    bad input; the usage itself stays one `--help` away. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `tailprompt` parser with `command`'s full sub-parser; every other command is listed by name and
    help line only, so building it imports nothing heavy."""
    parser = OneLineParser(
        prog="tailprompt",
        description="Prompt tuning of CLIP-style models on long-tailed few-shot data.",
    )
    parser.add_argument("--version", action="version", version=f"tailprompt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in COMMANDS.items():
        if name == command:
            importlib.import_module(f"tailprompt.commands.{spec.module}").add_parser(sub)
        else:
            sub.add_parser(name, help=spec.help, add_help=False)
    return parser


def invoked_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (its first token that is a command name), or None."""
    return next((token for token in argv if token in COMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(invoked_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    format_warning = warnings.formatwarning
    warnings.formatwarning = one_line_warnings()  # a library's warning is one line too, not its source line
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"tailprompt {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # every output is written atomically (utils.atomic_path), so an interrupted command leaves no half file
        print(f"tailprompt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.verbose:
            raise  # the traceback, for a bug report
        # Input no check above recognised, or a bug: still one line, and the way to the traceback.
        print(f"tailprompt {args.command}: error: {type(e).__name__}: {one_line(str(e))[:500]} (unexpected; rerun "
              f"with -v for the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = format_warning


def one_line(text: str) -> str:
    """`text` with its line breaks and runs of spaces folded into single spaces (error messages are one line)."""
    return " ".join(text.split())


def one_line_warnings() -> Callable[..., str]:
    """A `warnings.formatwarning` that writes each warning as one line, and a repeated one not again.

    Python forgets which warnings it has shown whenever a filter changes (every `catch_warnings` block does),
    so a learner built twice in one command would warn twice; the lines shown are remembered here, per command.
    """
    shown: set[str] = set()

    def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                       line: str | None = None) -> str:
        text = one_line(str(message))
        if text in shown:
            return ""
        shown.add(text)
        return f"warning: {text}\n"

    return format_warning


if __name__ == "__main__":  # pragma: no cover - `python -m tailprompt.cli`, as `python -m tailprompt`
    sys.exit(main())
