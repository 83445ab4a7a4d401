"""The `tailprompt` command: argparse subcommands, one module each under `tailprompt.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tailprompt import __version__
from tailprompt.errors import UserError

__all__ = ["UserError", "build_parser", "main", "user_errors"]

# Module names under tailprompt.commands, in --help order. Each defines add_parser(subparsers).
COMMANDS: list[str] = [
    "train",
    "eval",
    "sweep",
    "demo",
    "list_presets",
    "report",
    "pretrain_embedded",
    "convert_weights",
    "data",
    "features",
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors that bad configs, files and names raise into `UserError`s (one line, exit 2)."""
    from tailprompt.config import ConfigError

    try:
        yield
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as e:
        # KeyError's str() adds quotes around the registry's message; take the message itself.
        raise UserError(str(e.args[0]) if isinstance(e, KeyError) else str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailprompt",
        description="Prompt tuning of CLIP-style models on long-tailed few-shot data.",
    )
    parser.add_argument("--version", action="version", version=f"tailprompt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tailprompt.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"tailprompt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
