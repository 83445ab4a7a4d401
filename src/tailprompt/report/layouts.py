"""Paper layouts: the two comparison tables of issue #11, printed the way the papers print them.

* `cpt_table` — CPT's main table (seed 000): one row per imbalance ratio tau, one column per method
  (MaPLe, CoPrompt, NPT, DeKg, DPC, CPT), each cell the base-to-new harmonic mean averaged over the
  datasets (HM per dataset and seed first, then the mean over datasets per seed, then mean ± std over
  seeds). Cross-dataset and domain-generalization runs of the same methods, when present, get the same
  shape with the average accuracy over the targets. The best method of each row is bold.
* `tcpt_table` — TCPT's per-learner table (seed 004): one row per prompt learner (CoOp, CoCoOp, MaPLe,
  KgCoOp, PromptSRC, ProGrad), columns base ECE and novel ECE of the learner alone and with TCPT's
  regularisers, averaged over datasets; one table per tau, plus the same layout for accuracy. The better
  of each (alone, +TCPT) pair is bold.

Every row / column of the paper is printed, with "–" where no run exists, so a partial sweep shows what
is missing. A cell averaging fewer datasets than its table says "without ..." and is never bold. The
presets behind each column are the sweep files' (`configs/sweeps/cpt_table.yaml`, `tcpt_table.yaml`);
`substitutions` takes another preset's runs for one of them (e.g. `{"dpc_coop": "dpc_maple"}`).
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailprompt.report.aggregate import Cell, Metric, dataset_average_cell, papers_hm_cell, split_value
from tailprompt.report.results import (
    LEGACY_PROTOCOL_LABELS,
    ReportError,
    backbone_name,
    deduplicated,
    experiment_layout,
    load_results,
    split_roles,
    tau_key,
)
from tailprompt.utils import write_text_atomic

# CPT's main table: (column label, preset) in the paper's order; "Ours" is CPT.
CPT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("MaPLe", "maple"), ("CoPrompt", "coprompt"), ("NPT", "npt_maple"), ("DeKg", "dekg"), ("DPC", "dpc_coop"),
    ("CPT", "cpt_maple"),
)
# TCPT's per-learner table: (row label, learner alone, learner + TCPT's regularisers).
TCPT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("CoOp", "coop", "tcpt_coop"), ("CoCoOp", "cocoop", "tcpt_cocoop"), ("MaPLe", "maple", "tcpt_maple"),
    ("KgCoOp", "kgcoop", "tcpt_kgcoop"), ("PromptSRC", "promptsrc", "tcpt_promptsrc"),
    ("ProGrad", "prograd", "tcpt_prograd"),
)
FORMATS = {"md": "md", "csv": "csv", "latex": "tex"}  # format -> file suffix


@dataclass
class PaperTable:
    """A table in a paper's shape: labelled rows and columns of cells, bold per row within column groups."""

    key: str  # file-safe name
    title: str
    caption: str
    row_header: str  # header of the row-label column ("Imbalance ratio", "Prompt tuning method")
    columns: list[str]
    rows: list[tuple[str, list[Cell]]]
    groups: list[list[int]]  # column indices compared with each other in a row (the best is bold)
    higher_is_better: bool
    datasets: list[str] = field(default_factory=list)  # datasets the averages are over

    @property
    def max_seeds(self) -> int:
        return max((c.n for _, cells in self.rows for c in cells), default=0)

    def missing(self, cell: Cell) -> list[str]:
        """Datasets of the table a cell's average leaves out (empty for a cell without values)."""
        return [d for d in self.datasets if cell.n and d not in cell.datasets]


@dataclass(frozen=True)
class Setting:
    """Runs comparable in one table: same protocol, backbone and shots."""

    protocol: str
    backbone: str
    shots: int
    label: str = field(default="", compare=False)  # the protocol in words (result.json's protocol_label)

    def words(self) -> str:
        protocol = self.label or LEGACY_PROTOCOL_LABELS.get(self.protocol, self.protocol)
        return f"{protocol}, {self.backbone}, {self.shots}-shot"

    def slug(self) -> str:
        text = f"{self.protocol}__{self.backbone}_{self.shots}"
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def setting_of(record: dict[str, Any]) -> Setting:
    label = record.get("protocol_label")
    shots = int(record.get("shots") or 0)
    return Setting(record["protocol"], backbone_name(record), shots, label if isinstance(label, str) else "")


def target_mean_accuracy(record: dict[str, Any]) -> float | None:
    """Mean accuracy over a transfer run's target splits (the splits whose role is `target`)."""
    targets = [s for s, role in split_roles(record).items() if role.target]
    values = [split_value(s, "accuracy")(record) for s in targets]
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def _by_setting(records: Sequence[dict[str, Any]], methods: set[str]) -> dict[Setting, list[dict[str, Any]]]:
    groups: dict[Setting, list[dict[str, Any]]] = {}
    for r in records:
        if r["method"] in methods:
            groups.setdefault(setting_of(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0].protocol, kv[0].backbone, kv[0].shots)))


CellOf = Callable[[Sequence[dict[str, Any]]], Cell]  # the runs of one method at one tau -> their table cell


def dataset_average_of(metric: Metric) -> CellOf:
    """Cells that average `metric` over datasets per seed (`dataset_average_cell`)."""
    return functools.partial(dataset_average_cell, metric=metric)


def _cell(records: Sequence[dict[str, Any]], method: str, tau: float, cell_of: CellOf) -> Cell:
    return cell_of([r for r in records if r["method"] == method and tau_key(r["tau"]) == tau])


def cpt_tables(records: Sequence[dict[str, Any]], substitutions: Mapping[str, str] | None = None) -> list[PaperTable]:
    """CPT's main table (rows tau, columns methods) per setting: HM for base-to-new, target average else."""
    subs = dict(substitutions or {})
    columns = [(label, subs.get(preset, preset)) for label, preset in CPT_COLUMNS]
    tables = []
    for setting, recs in _by_setting(records, {m for _, m in columns}).items():
        layout = experiment_layout(recs)  # the split roles the runs declare, not the protocol's name
        if layout.harmonic:
            cell_of, what = papers_hm_cell, ("harmonic mean of base and new accuracy (per dataset the HM of the "
                                             "seed-mean accuracies; ± the spread of per-seed HMs)")
        elif layout.targets:
            cell_of, what = dataset_average_of(target_mean_accuracy), "accuracy averaged over the target datasets"
        else:
            continue
        taus = sorted({tau_key(r["tau"]) for r in recs}, reverse=True)
        rows = [(f"τ={tau:g}", [_cell(recs, m, tau, cell_of) for _, m in columns]) for tau in taus]
        datasets = sorted({r["dataset"] for r in recs})
        tables.append(PaperTable(
            key=f"cpt_table__{setting.slug()}",
            title=f"CPT main table ({setting.words()})",
            caption=(f"Top-1 {what}, %, averaged over {len(datasets)} dataset(s): {', '.join(datasets)}; "
                     "rows are imbalance ratios, columns the methods (presets "
                     + ", ".join(f"{label}={m}" for label, m in columns) + "). Bold: best method per row."),
            row_header="Imbalance ratio",
            columns=[label for label, _ in columns],
            rows=rows,
            groups=[list(range(len(columns)))],
            higher_is_better=True,
            datasets=datasets,
        ))
    return tables


def tcpt_tables(records: Sequence[dict[str, Any]], substitutions: Mapping[str, str] | None = None) -> list[PaperTable]:
    """TCPT's per-learner table (rows learners; base / novel ECE alone and +TCPT) per setting and tau."""
    subs = dict(substitutions or {})
    rows_spec = [(label, subs.get(alone, alone), subs.get(ours, ours)) for label, alone, ours in TCPT_ROWS]
    methods = {m for _, a, o in rows_spec for m in (a, o)}
    tables = []
    for setting, recs in _by_setting(records, methods).items():
        pair = experiment_layout(recs).harmonic  # (base, new): the splits of the harmonic mean
        if pair is None:
            continue
        datasets = sorted({r["dataset"] for r in recs})
        for tau in sorted({tau_key(r["tau"]) for r in recs}, reverse=True):
            for kind, words, measure, higher in (
                    ("ece", "ECE", "Expected calibration error (%, 10 bins, lower is better)", False),
                    ("accuracy", "Acc", "Top-1 accuracy (%)", True)):
                field_ = kind
                base, new = (dataset_average_of(split_value(split, field_)) for split in pair)
                rows = [(label, [_cell(recs, alone, tau, base), _cell(recs, ours, tau, base),
                                 _cell(recs, alone, tau, new), _cell(recs, ours, tau, new)])
                        for label, alone, ours in rows_spec]
                tables.append(PaperTable(
                    key=f"tcpt_table__{setting.slug()}__tau{tau:g}__{kind}",
                    title=f"TCPT per-learner {words} table ({setting.words()}, τ={tau:g})",
                    caption=(f"{measure} on base and novel classes, averaged over {len(datasets)} dataset(s): "
                             f"{', '.join(datasets)}; each learner alone (orig) and with TCPT's margin and moment "
                             "terms (+TCPT). Bold: the better of each pair."),
                    row_header="Prompt tuning method",
                    columns=[f"Base {words} (orig)", f"Base {words} (+TCPT)", f"Novel {words} (orig)",
                             f"Novel {words} (+TCPT)"],
                    rows=rows,
                    groups=[[0, 1], [2, 3]],
                    higher_is_better=higher,
                    datasets=datasets,
                ))
    return tables


LAYOUTS: dict[str, Callable[[Sequence[dict[str, Any]], Mapping[str, str] | None], list[PaperTable]]] = {
    "cpt_table": cpt_tables,
    "tcpt_table": tcpt_tables,
}


def layout_presets(layout: str) -> frozenset[str]:
    """The presets whose runs `layout` reads (what `--use PRESET=OTHER` may replace)."""
    if layout == "cpt_table":
        return frozenset(preset for _, preset in CPT_COLUMNS)
    return frozenset(preset for _, alone, ours in TCPT_ROWS for preset in (alone, ours))


def layout_tables(records: Sequence[dict[str, Any]], layout: str,
                  substitutions: Mapping[str, str] | None = None) -> list[PaperTable]:
    """The tables of `layout` from run records (one record per method, tau, seed and dataset is kept)."""
    if layout not in LAYOUTS:
        raise ReportError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    kept, _ = deduplicated(records)
    return [t for t in LAYOUTS[layout](kept, substitutions) if any(c.n for _, cells in t.rows for c in cells)]


# ---------------------------------------------------------------------------------------------- rendering


def best_in_row(table: PaperTable, cells: Sequence[Cell]) -> set[int]:
    """Column indices holding the best printed mean of their group; none where a group has one value."""
    best: set[int] = set()
    for group in table.groups:
        means = {j: round(cells[j].mean, 2) for j in group
                 if cells[j].mean is not None and not table.missing(cells[j])}
        if len(set(means.values())) < 2:
            continue
        target = max(means.values()) if table.higher_is_better else min(means.values())
        best |= {j for j, m in means.items() if m == target}
    return best


def cell_text(table: PaperTable, cell: Cell, bold: bool, style: str) -> str:
    if cell.mean is None:
        return "–" if style == "md" else "--"
    mean = f"{cell.mean:.2f}"
    missing = table.missing(cell)
    marks = ([f"n={cell.n}"] if cell.n < table.max_seeds else []) + (
        [f"without {', '.join(missing)}"] if missing else [])
    if style == "md":
        text = (f"**{mean}**" if bold else mean) + (f" ± {cell.std:.2f}" if cell.n > 1 else "")
        return text + (f" ({'; '.join(marks)})" if marks else "")
    text = (f"\\mathbf{{{mean}}}" if bold else mean) + (f" \\pm {cell.std:.2f}" if cell.n > 1 else "")
    return f"${text}$" + (f"\\,({_latex_escape('; '.join(marks))})" if marks else "")


def render_markdown(table: PaperTable) -> str:
    lines = [f"### {table.title}", "", table.caption, "",
             "| " + " | ".join([table.row_header, *table.columns]) + " |",
             "|" + "|".join([":--"] + ["--:"] * len(table.columns)) + "|"]
    for label, cells in table.rows:
        best = best_in_row(table, cells)
        lines.append("| " + " | ".join([label] + [cell_text(table, c, j in best, "md")
                                                  for j, c in enumerate(cells)]) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "τ": r"$\tau$", "±": r"$\pm$", "–": "--"}
    return "".join(special.get(ch, ch) for ch in text)


def render_latex(table: PaperTable) -> str:
    lines = [r"\begin{table}[t]", r"  \centering",
             f"  \\caption{{{_latex_escape(table.title)}. {_latex_escape(table.caption)}}}",
             f"  \\label{{tab:{table.key.replace('_', '-')}}}",
             f"  \\begin{{tabular}}{{l{'c' * len(table.columns)}}}", r"  \toprule",
             "  " + " & ".join(_latex_escape(x) for x in [table.row_header, *table.columns]) + r" \\",
             r"  \midrule"]
    for label, cells in table.rows:
        best = best_in_row(table, cells)
        lines.append("  " + " & ".join([_latex_escape(label)] + [cell_text(table, c, j in best, "latex")
                                                                 for j, c in enumerate(cells)]) + r" \\")
    lines += [r"  \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_csv(tables: Sequence[PaperTable]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["table", "row", "column", "mean", "std", "n_seeds", "seeds", "datasets"])
    for t in tables:
        for label, cells in t.rows:
            for column, cell in zip(t.columns, cells):
                writer.writerow([t.key, label, column, "" if cell.mean is None else repr(round(cell.mean, 6)),
                                 "" if cell.std is None else repr(round(cell.std, 6)), cell.n,
                                 " ".join(map(str, cell.seeds)), " ".join(cell.datasets)])
    return buf.getvalue()


def render_layout(tables: Sequence[PaperTable], fmt: str = "md") -> str:
    """All tables of a layout as one document in `fmt` (md, csv or latex)."""
    if fmt == "md":
        return "\n".join(render_markdown(t) for t in tables)
    if fmt == "latex":
        return "% needs \\usepackage{booktabs}\n" + "\n".join(render_latex(t) for t in tables)
    if fmt == "csv":
        return render_csv(tables)
    raise ReportError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")


def write_layout(runs_dir: str | Path, layout: str, out_dir: str | Path | None = None, fmt: str = "md",
                 substitutions: Mapping[str, str] | None = None) -> Path:
    """Write `<out_dir>/<layout>.<md|csv|tex>` (default out_dir: `runs_dir/report`) atomically.

    Raises:
        ReportError: unknown layout or format, no runs, or no run of any of the layout's presets.
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
    runs_dir = Path(runs_dir)
    records = load_results(runs_dir)
    tables = layout_tables(records, layout, substitutions)
    if not tables:
        names = sorted({r["method"] for r in records})
        raise ReportError(f"{runs_dir}: no run of the presets the {layout} layout reads (found methods: "
                          f"{', '.join(names) or 'none'}); see configs/sweeps/{layout}.yaml")
    path = (Path(out_dir) if out_dir is not None else runs_dir / "report") / f"{layout}.{FORMATS[fmt]}"
    from tailprompt.files import check_writable

    check_writable(path.parent, "report folder", "--out")
    write_text_atomic(path, render_layout(tables, fmt))
    return path


__all__ = ["CPT_COLUMNS", "LAYOUTS", "PaperTable", "TCPT_ROWS", "cpt_tables", "layout_tables", "render_layout",
           "tcpt_tables", "write_layout"]
