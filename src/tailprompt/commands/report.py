"""`tailprompt report RUNS_DIR`: paper-style tables (mean ± std over seeds) and plots from stored runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tailprompt.errors import UserError

# tailprompt.report.FORMATS, spelled out so that building the parser imports no numpy/torch (a test keeps them equal)
FORMATS = ("md", "csv", "latex")
# tailprompt.report.layouts.LAYOUTS' names, spelled out for the same reason (the same test keeps them equal)
LAYOUTS = ("cpt_table", "tcpt_table")

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="tables and plots from a runs folder",
        description="Aggregate every result.json under RUNS_DIR (at any depth) into tables (rows = methods, "
                    "columns = tau or target datasets, mean ± std over seeds) and plots (reliability, class cosine "
                    "matrices, accuracy vs shots, seed spread). Folders without result.json are skipped.",
    )
    parser.add_argument("runs_dir", metavar="RUNS_DIR", type=Path,
                        help="folder holding run folders (<run_id>/result.json, at any depth)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="md",
                        help="table format (default md)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUNS_DIR/report/)")
    parser.add_argument("--no-plots", action="store_true",
                        help="tables and summary.json only (no matplotlib needed)")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html: one static page (no network) with every table, sortable, "
                             "the plots inline and an index of the runs")
    parser.add_argument("--methods", default=None,
                        help="comma-separated preferred row order of methods, e.g. zeroshot,coop,cpt_coop")
    parser.add_argument("--layout", choices=("standard", *LAYOUTS), default="standard",
                        help="standard: every table and plot; cpt_table: CPT's main table (rows tau, columns "
                             "MaPLe, CoPrompt, NPT, DeKg, DPC, CPT); tcpt_table: TCPT's per-learner ECE table "
                             "(learners alone and +TCPT); written to OUT/<layout>.<md|csv|tex>")
    parser.add_argument("--use", action="append", default=[], metavar="PRESET=OTHER",
                        help="with --layout: read OTHER's runs where the layout names PRESET, e.g. "
                             "dpc_coop=dpc_maple (repeatable)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from tailprompt.report import ReportError, write_report

    if args.layout != "standard":
        return run_layout(args)
    if args.use:
        raise UserError(f"--use goes with --layout ({', '.join(LAYOUTS)}); the standard report reads every run")
    order = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    try:
        paths = write_report(args.runs_dir, args.out, fmt=args.fmt, plots=not args.no_plots, order=order,
                             html=args.html)
    except ReportError as e:
        raise UserError(str(e)) from None
    if args.fmt == "md":
        print(paths[0].read_text(encoding="utf-8"))
    for path in paths:
        log.info("wrote %s", path)
    return 0


def run_layout(args: argparse.Namespace) -> int:
    """`--layout NAME`: the paper's table(s) only, printed (md) and written to OUT/<layout>.<suffix>."""
    from tailprompt.report import ReportError
    from tailprompt.report.layouts import layout_presets, write_layout

    if args.html or args.methods:
        raise UserError("--html and --methods go with the standard report; --layout writes its one table file")
    presets = layout_presets(args.layout)
    substitutions = {}
    for pair in args.use:
        old, sep, new = pair.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise UserError(f"--use {pair!r}: expected PRESET=OTHER, e.g. dpc_coop=dpc_maple")
        if old not in presets:
            raise UserError(f"--use {pair!r}: {args.layout} reads no preset {old!r}; its presets: "
                            f"{', '.join(sorted(presets))}")
        if old in substitutions:
            raise UserError(f"--use {pair!r}: {old} is already replaced by {substitutions[old]}")
        substitutions[old] = new
    try:
        path = write_layout(args.runs_dir, args.layout, args.out, fmt=args.fmt, substitutions=substitutions)
    except ReportError as e:
        raise UserError(str(e)) from None
    if args.fmt == "md":
        print(path.read_text(encoding="utf-8"))
    log.info("wrote %s", path)
    return 0
