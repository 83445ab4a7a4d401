"""CLI subcommands: each module exposes `add_parser(subparsers)` and sets `func(args) -> int`."""
