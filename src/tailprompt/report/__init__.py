"""Tables (Markdown, CSV, LaTeX) and plots from stored run records (`RUNS_DIR/*/result.json`).

    from tailprompt.report import load_results, summary_tables, render_table, write_report
    tables = summary_tables(load_results("runs"))
    print(render_table(tables[0], "md"))
    write_report("runs")  # runs/report/{tables.md, summary.json, *.png}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tailprompt.report.aggregate import Cell, dataset_average_cell, harmonic_mean, seed_statistics
from tailprompt.report.results import ReportError, deduplicated, load_results
from tailprompt.report.tables import (
    FILE_SUFFIX,
    FORMATS,
    NOTE,
    Column,
    Row,
    Table,
    latex_escape,
    render_table,
    render_tables,
    summary_tables,
)
from tailprompt.utils import write_json_atomic, write_text_atomic

REPORT_DIR = "report"


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None, fmt: str = "md",
                 plots: bool = True, order: Sequence[str] | None = None, html: bool = False) -> list[Path]:
    """Aggregate every run under `runs_dir` and write the report files atomically.

    Writes `tables.<md|csv|tex>`, `summary.json` (mean ± std over seeds of every metric per
    (experiment, method, tau), plus the tables' numbers, the averages over datasets included) and,
    with `plots`, the PNG figures.

    Args:
        runs_dir: folder holding `<run_id>/result.json`.
        out_dir: output folder (default `runs_dir/report/`).
        fmt: table format, `md`, `csv` or `latex`.
        plots: also draw figures (needs matplotlib, the `[plot]` extra).
        order: preferred order of methods in rows and legends.
        html: also write `report.html`: one static page with every table (sortable), the plots
            inline and an index of the runs.

    Returns:
        The written paths, tables first.

    Raises:
        ReportError: no readable runs, a corrupt `result.json`, an unknown format, or plots
            requested without matplotlib.
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir) if out_dir is not None else runs_dir / REPORT_DIR
    if plots:
        from tailprompt.report.plots import require_matplotlib

        require_matplotlib()  # fail before writing anything
    results = load_results(runs_dir)
    if not results:
        raise ReportError(f"{runs_dir}: no run folder holds a result.json (nothing to report)")
    kept, dropped = deduplicated(results)
    tables = summary_tables(kept, order, extra=True)
    from tailprompt.files import check_writable

    check_writable(out_dir, "report folder", "--out")  # before the first file, so none is left alone
    table_path = out_dir / f"tables.{FILE_SUFFIX[fmt]}"
    write_text_atomic(table_path, render_tables(tables, fmt))
    summary_path = out_dir / "summary.json"
    write_json_atomic(summary_path, {
        "runs_dir": str(runs_dir),
        "n_runs": len(kept),
        "ignored_duplicates": dropped,
        "statistics": "mean and population std (ddof=0) over seeds; HM and target averages per seed first; "
                      "averages over datasets per seed first, HM per dataset and seed before averaging",
        "experiments": seed_statistics(kept, order),
        "tables": [t.to_dict() for t in tables],
    })
    paths = [table_path, summary_path]
    if plots:
        from tailprompt.report.plots import write_plots

        paths += write_plots(kept, out_dir, order)
    if html:
        from tailprompt.report.html import render_html

        html_path = out_dir / "report.html"
        figures = [p for p in paths if p.suffix == ".png"]
        write_text_atomic(html_path, render_html(tables, kept, figures, title=f"tailprompt report: {runs_dir}"))
        paths.append(html_path)
    return paths


__all__ = ["Cell", "Column", "FORMATS", "NOTE", "ReportError", "Row", "Table", "dataset_average_cell",
           "harmonic_mean",
           "latex_escape", "load_results", "render_table", "render_tables", "seed_statistics",
           "summary_tables", "write_report"]
