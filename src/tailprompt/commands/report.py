"""`tailprompt report RUNS_DIR`: paper-style tables (mean ± std over seeds) and plots from stored runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tailprompt.cli import UserError

# tailprompt.report.FORMATS, spelled out so that building the parser imports no numpy/torch (a test keeps them equal)
FORMATS = ("md", "csv", "latex")

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="tables and plots from a runs folder",
        description="Aggregate RUNS_DIR/*/result.json into tables (rows = methods, columns = tau or "
                    "target datasets, mean ± std over seeds) and plots (reliability, class cosine matrices, "
                    "accuracy vs shots, seed spread). Folders without result.json are skipped.",
    )
    parser.add_argument("runs_dir", metavar="RUNS_DIR", type=Path, help="folder holding <run_id>/result.json")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="md",
                        help="table format (default md)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUNS_DIR/report/)")
    parser.add_argument("--no-plots", action="store_true",
                        help="tables and summary.json only (no matplotlib needed)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated preferred row order of methods, e.g. zeroshot,coop,cpt_coop")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from tailprompt.report import ReportError, write_report

    order = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    try:
        paths = write_report(args.runs_dir, args.out, fmt=args.fmt, plots=not args.no_plots, order=order)
    except ReportError as e:
        raise UserError(str(e)) from None
    if args.fmt == "md":
        print(paths[0].read_text(encoding="utf-8"))
    for path in paths:
        log.info("wrote %s", path)
    return 0
