"""Paper-style tables from run records: rows are methods, columns tau values or target datasets.

Layouts (one set of tables per experiment = (dataset, protocol, backbone, shots)):
- average over datasets (base-to-new and all classes, when a method was run on two or more
  datasets of one (protocol, backbone, shots) setting): Base / New / HM (or Acc) per tau and ECE per
  tau, each dataset's per-seed number averaged over datasets (HM per dataset first), then mean ± std
  over seeds — the papers' "Average over 11 datasets" table. It comes first in its setting.
- base-to-new: accuracy (Base / New / HM per tau), head / medium / tail accuracy per tau,
  calibration (ECE base / ECE new per tau) and, when recorded, post-hoc calibration (ECE after
  temperature scaling, ECE with DAC on new classes) — the layout of CPT's and TCPT's tables.
- all classes: accuracy / head / medium / tail per tau, ECE per tau.
- cross-dataset and domain generalization: accuracy and ECE on the source and each target plus
  the average over targets (CoOp's cross-dataset table); rows carry tau when several were run.
Every cell is mean ± std over seeds (`aggregate.Cell`); derived numbers are computed per seed first.
Tables are ordered by setting (protocol, backbone, shots), then the average, then dataset by dataset.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tailprompt.report.aggregate import (
    Cell,
    Metric,
    base_new_hm,
    dataset_average_cell,
    group_value,
    record_value,
    seed_cell,
    split_value,
    target_average,
)
from tailprompt.report.results import (
    ExperimentKey,
    Layout,
    deduplicated,
    experiment_key,
    experiment_layout,
    experiment_slugs,
    group_names,
    grouped_by_experiment,
    method_order,
    safe_name,
    tau_key,
)

FORMATS = ("md", "csv", "latex")
FILE_SUFFIX = {"md": "md", "csv": "csv", "latex": "tex"}
NOTE = ("Cells are mean ± std over seeds (population std, ddof=0, as Dassl's parse_test_res.py); HM and "
        "target averages are computed per seed, then averaged; averages over datasets take each dataset's "
        "per-seed numbers (HM per dataset), average them over datasets per seed, then over seeds. A cell over "
        "fewer seeds than the rest of its table says so (n=...). Bold marks the best mean per column (highest "
        "accuracy, lowest ECE).")
AVERAGE_DATASET = "average"  # the `dataset` of an average table (csv's dataset column)


@dataclass(frozen=True)
class Column:
    """A table column: a metric name, under a tau group for tau-column layouts."""

    name: str
    tau: float | None = None
    higher_is_better: bool = True

    @property
    def group(self) -> str:
        return "" if self.tau is None else f"τ={self.tau:g}"

    @property
    def header(self) -> str:
        return f"{self.group} {self.name}".strip()


@dataclass
class Row:
    method: str
    tau: float | None  # set when rows (not columns) are split by tau
    cells: list[Cell]


@dataclass
class Table:
    """One rendered-table's worth of aggregated numbers; `render_table` formats it."""

    key: str  # unique file-safe name, e.g. "world_colour_shape__base_to_new__accuracy"
    title: str
    caption: str
    dataset: str
    protocol: str
    kind: str  # accuracy | groups | calibration | calibration_posthoc
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    tau_rows: bool = False  # rows are (method, tau) pairs (transfer protocols with several tau)
    datasets: list[str] = field(default_factory=list)  # the datasets an average table is over

    @property
    def max_seeds(self) -> int:
        return max((c.n for r in self.rows for c in r.cells), default=0)

    def missing_datasets(self, cell: Cell) -> list[str]:
        """The table's datasets a cell of an average table does not average (empty elsewhere)."""
        if not self.datasets or not cell.datasets:
            return []
        return [d for d in self.datasets if d not in cell.datasets]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "title": self.title, "caption": self.caption, "dataset": self.dataset,
            "protocol": self.protocol, "kind": self.kind, "datasets": list(self.datasets),
            "columns": [{"name": c.name, "tau": c.tau, "higher_is_better": c.higher_is_better}
                        for c in self.columns],
            "rows": [{"method": r.method, "tau": r.tau, "cells": [c.to_dict() for c in r.cells]}
                     for r in self.rows],
        }


# (column name, metric, higher is better) per table kind, for tau-column layouts.
_Spec = list[tuple[str, Metric, bool]]


def _accuracy_caption(layout: Layout) -> str:
    names = [layout.labels[n].lower() for n in layout.splits]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"Top-1 accuracy (%) on {listed} classes" + (" and their harmonic mean" if layout.harmonic else "")


def _groups_caption(layout: Layout, groups: Sequence[str]) -> str:
    train = layout.labels.get(layout.training or "", "training").lower()
    if groups[0] == "many":
        return (f"Top-1 accuracy (%) of many / medium / few-shot {train} classes (> 100, 20-100, < 20 "
                f"training images).")
    return (f"Top-1 accuracy (%) of head / medium / tail {train} classes (training classes sorted by shot "
            f"count, cut into three groups).")


def _split_specs(layout: Layout, groups: Sequence[str]) -> list[tuple[str, str, _Spec]]:
    """Tau-column tables of a protocol without transfer targets, from its split roles.

    One split (all classes): accuracy with the class groups, then ECE before / after temperature
    scaling. Several (base and new): accuracy per split plus the harmonic mean when the roles declare
    one, the class groups, ECE per split, and post-hoc calibration (TS per split, DAC on the splits
    whose classes the prompts were not trained on).
    """
    group_cols: _Spec = [(g.capitalize(), group_value(g), True) for g in groups]
    if len(layout.splits) == 1:
        (only,) = layout.splits
        return [
            ("accuracy", _accuracy_caption(layout) + " and on " + " / ".join(groups) + " classes.",
             [("Acc", split_value(only, "accuracy"), True), *group_cols]),
            ("calibration", "Expected calibration error (%, 10 bins, lower is better), before and after "
                            "temperature scaling.",
             [("ECE", split_value(only, "ece"), False),
              ("ECE-TS", split_value(only, "ece_temperature_scaled"), False)]),
        ]
    return [
        ("accuracy", _accuracy_caption(layout) + ".", _accuracy_columns(layout)),
        ("groups", _groups_caption(layout, groups), group_cols),
        ("calibration", "Expected calibration error (%, 10 bins, lower is better).",
         [(f"ECE {layout.labels[n].lower()}", split_value(n, "ece"), False) for n in layout.splits]),
        ("calibration_posthoc",
         "ECE (%) after post-hoc temperature scaling (TS) and with DAC on new classes.",
         [(f"ECE-TS {layout.labels[n].lower()}", split_value(n, "ece_temperature_scaled"), False)
          for n in layout.splits]
         + [(f"ECE-DAC {layout.labels[n].lower()}", split_value(n, "ece_dac"), False)
            for n in layout.splits if n != layout.training]),
    ]


def _accuracy_columns(layout: Layout) -> _Spec:
    columns: _Spec = [(layout.labels[n], split_value(n, "accuracy"), True) for n in layout.splits]
    if layout.harmonic:
        columns.append(("HM", base_new_hm, True))
    return columns


def _extra_specs(layout: Layout) -> list[tuple[str, str, _Spec]]:
    """What result.json holds beyond accuracy and ECE: MCE, adaptive ECE, NLL, and the geometry."""
    labels = {n: layout.labels[n].lower() for n in layout.splits}
    one = len(layout.splits) == 1
    calib: _Spec = []
    for field_, name in (("mce", "MCE"), ("aece", "aECE"), ("nll", "NLL")):
        calib += [(name if one else f"{name} {labels[n]}", split_value(n, field_), False) for n in layout.splits]
    geometry: _Spec = [
        ("LCD", record_value("geometry", "learned", "lcd"), False),
        ("MID", record_value("geometry", "image", "mid"), False),
        ("Eff. rank", record_value("geometry", "learned", "effective_rank"), True),
        ("Cluster ETF gap", record_value("geometry", "learned", "cluster_etf_gap"), False),
    ]
    return [
        ("calibration_more", "Maximum calibration error (%), adaptive (equal-mass) ECE (%) and negative "
                             "log-likelihood, lower is better.", calib),
        ("geometry", "Class-feature geometry of the learned prompts: LCD (NPT's Δ_LCD), MID (NPT's Δ_MID on "
                     "test images), effective rank, and the intra-cluster ETF gap (CPT).", geometry),
    ]


def _average_specs(layout: Layout) -> list[tuple[str, str, _Spec]]:
    """The columns averaged over datasets: the papers' average table (accuracy) plus ECE."""
    if len(layout.splits) == 1:
        (only,) = layout.splits
        return [
            ("accuracy", _accuracy_caption(layout) + ".", [("Acc", split_value(only, "accuracy"), True)]),
            ("calibration", "Expected calibration error (%, 10 bins, lower is better).",
             [("ECE", split_value(only, "ece"), False)]),
        ]
    return [
        ("accuracy", _accuracy_caption(layout) + ".", _accuracy_columns(layout)),
        ("calibration", "Expected calibration error (%, 10 bins, lower is better).",
         [(f"ECE {layout.labels[n].lower()}", split_value(n, "ece"), False) for n in layout.splits]),
    ]


CellOf = Callable[[Sequence[dict[str, Any]], Metric], Cell]


def summary_tables(results: Sequence[dict[str, Any]], order: Sequence[str] | None = None,
                   extra: bool = False) -> list[Table]:
    """Aggregate run records into paper-style tables (see the module docstring for layouts).

    Tables come setting by setting ((protocol, backbone, shots), sorted); within a setting the
    average over datasets (when one is made) comes first, then each dataset's tables.

    Args:
        results: records as returned by `load_results` (duplicates of a (method, tau, seed) cell
            keep the newest file only).
        order: preferred row order (method names); other methods follow (zero-shot first, then by name).
        extra: also tabulate MCE, adaptive ECE, NLL and the geometry (the report files; the demo's
            printed summary leaves them out).
    """
    kept, _ = deduplicated(results)
    groups = grouped_by_experiment(kept)
    slugs = experiment_slugs(groups)
    settings: dict[tuple[str, str, int], list[ExperimentKey]] = {}
    for key in groups:
        settings.setdefault((key.protocol, key.backbone, key.shots), []).append(key)
    tables: list[Table] = []
    for setting in sorted(settings):
        keys = sorted(settings[setting])
        setting_records = [r for k in keys for r in groups[k]]
        # Transfer protocols already average over their targets; the others get an average over datasets.
        if not experiment_layout(setting_records).targets:
            shared = sum(s[0] == setting[0] for s in settings) > 1  # name the setting in the key
            tables += _dataset_average_tables(setting, setting_records, order, shared)
        for key in keys:
            records = groups[key]
            methods = method_order(records, order)
            layout = experiment_layout(records)
            if layout.targets:
                tables += _transfer_tables(key, slugs[key], records, methods, layout)
            else:
                tables += _tau_column_tables(key, slugs[key], records, methods,
                                             _split_specs(layout, group_names(records)))
            if extra:
                tables += _tau_column_tables(key, slugs[key], records, methods, _extra_specs(layout))
    return tables


def _dataset_average_tables(setting: tuple[str, str, int], records: list[dict[str, Any]],
                            order: Sequence[str] | None, name_setting: bool) -> list[Table]:
    """The "Average over N datasets" tables of one (protocol, backbone, shots) setting.

    Made only when some method was run on two or more of the setting's datasets. Each cell is
    `dataset_average_cell`: per seed the mean over datasets of the per-dataset number (HM per
    dataset and seed first), then mean ± std over seeds. A method lacking a dataset keeps a row
    averaged over the datasets it has, marked "without ..." and never bold, since its number
    averages other datasets than the rest of the column.

    Args:
        setting: (protocol, backbone, shots).
        records: every run of the setting, all datasets.
        order: preferred row order of methods.
        name_setting: put backbone and shots in the table key (the protocol has other settings).
    """
    protocol, backbone, shots = setting
    methods = method_order(records, order)
    if not any(len({r["dataset"] for r in records if r["method"] == m}) > 1 for m in methods):
        return []
    datasets = sorted({r["dataset"] for r in records})
    first = experiment_key(records[0])
    key = ExperimentKey(f"Average over {len(datasets)} datasets", protocol, backbone, shots, first.label,
                        first.full_data)
    slug = f"{AVERAGE_DATASET}__{protocol}" + (f"__{backbone}_{shots}shot" if name_setting else "")
    note = (f" Averaged over {len(datasets)} datasets: {', '.join(datasets)}. For each method, tau and seed "
            "the per-dataset numbers are averaged over datasets (HM computed per dataset and seed from that "
            "dataset's base and new accuracy, then averaged, not the HM of averaged accuracies); cells are mean "
            "± std over seeds of those averages. A seed counts only where the method has it on every dataset "
            "it was run on; a method missing a dataset is averaged over the others, marked (without ...) and "
            "not bolded.")
    tables = _tau_column_tables(key, safe_name(slug), records, methods, _average_specs(experiment_layout(records)),
                                cell_of=dataset_average_cell, dataset=AVERAGE_DATASET, caption_suffix=note)
    for table in tables:
        table.datasets = datasets
    return tables


def _tau_column_tables(key: ExperimentKey, slug: str, records: list[dict[str, Any]], methods: list[str],
                       specs: list[tuple[str, str, _Spec]], cell_of: CellOf = seed_cell,
                       dataset: str | None = None, caption_suffix: str = "") -> list[Table]:
    taus = sorted({tau_key(r["tau"]) for r in records}, reverse=True)
    tables = []
    for kind, caption, spec in specs:
        columns, metrics = [], []
        for tau in taus:
            for name, metric, higher in spec:
                columns.append(Column(name, tau, higher))
                metrics.append(metric)
        rows = []
        for method in methods:
            runs = [r for r in records if r["method"] == method]
            cells = [cell_of([r for r in runs if tau_key(r["tau"]) == c.tau], m)
                     for c, m in zip(columns, metrics)]
            rows.append(Row(method, None, cells))
        table = _without_empty_columns(Table(f"{slug}__{kind}", key.title(), caption + caption_suffix,
                                             key.dataset if dataset is None else dataset, key.protocol, kind,
                                             columns, rows))
        if table.columns:
            tables.append(table)
    return tables


def _transfer_tables(key: ExperimentKey, slug: str, records: list[dict[str, Any]],
                     methods: list[str], layout: Layout) -> list[Table]:
    targets = list(layout.targets)
    sources = list(layout.splits)
    taus = sorted({tau_key(r["tau"]) for r in records}, reverse=True)
    tables = []
    for kind, field_, higher, caption in (
            ("accuracy", "accuracy", True, "Top-1 accuracy (%) on the source and each target; Average is "
                                           "over targets."),
            ("calibration", "ece", False, "Expected calibration error (%, 10 bins, lower is better); Average "
                                          "is over targets.")):
        columns = [Column(layout.labels[s], None, higher) for s in sources + targets]
        metrics: list[Metric] = [split_value(s, field_) for s in sources + targets]
        if len(targets) > 1:
            columns.append(Column("Average", None, higher))
            metrics.append(target_average(targets, field_))
        rows = []
        for method in methods:
            for tau in taus:
                runs = [r for r in records if r["method"] == method and tau_key(r["tau"]) == tau]
                if runs:
                    rows.append(Row(method, tau, [seed_cell(runs, m) for m in metrics]))
        table = _without_empty_columns(Table(f"{slug}__{kind}", key.title(), caption, key.dataset,
                                             key.protocol, kind, columns, rows, tau_rows=len(taus) > 1))
        if table.columns:
            tables.append(table)
    return tables


def _without_empty_columns(table: Table) -> Table:
    keep = [j for j in range(len(table.columns)) if any(r.cells[j].n for r in table.rows)]
    table.columns = [table.columns[j] for j in keep]
    for row in table.rows:
        row.cells = [row.cells[j] for j in keep]
    return table


# ---------------------------------------------------------------------------------------------- rendering


def render_table(table: Table, fmt: str = "md") -> str:
    """One table as Markdown (`md`), CSV (`csv`, long format: one line per cell) or LaTeX (`latex`,
    booktabs, tau groups as \\multicolumn headers)."""
    if fmt == "md":
        return f"**{_heading(table)}.** {table.caption}\n\n{_markdown(table)}"
    if fmt == "csv":
        return _csv([table])
    if fmt == "latex":
        return _latex(table)
    raise ValueError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")


def render_tables(tables: Sequence[Table], fmt: str = "md") -> str:
    """All tables as one document (the content of tables.md / tables.csv / tables.tex)."""
    if fmt == "csv":
        return _csv(tables)
    if fmt == "md":
        parts = ["# tailprompt report", "", NOTE, ""]
        for t in tables:
            parts += [f"### {_heading(t)}", "", t.caption, "", _markdown(t)]
        return "\n".join(parts)
    if fmt == "latex":
        header = ["% tailprompt report: needs \\usepackage{booktabs}", "% " + NOTE, ""]
        return "\n".join(header) + "\n".join(_latex(t) + "\n" for t in tables)
    raise ValueError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _heading(table: Table) -> str:
    return f"{table.title}: {table.kind.replace('_', ' ')}"


def _best_means(table: Table) -> list[float | None]:
    """Per column, the best mean rounded as printed (ties all win); None unless two means differ."""
    best: list[float | None] = []
    for j, col in enumerate(table.columns):
        # an average missing a dataset is not comparable with the column's full averages
        means = [round(m, 2) for r in table.rows
                 if (m := r.cells[j].mean) is not None and not table.missing_datasets(r.cells[j])]
        if len(set(means)) < 2:  # one value, or all tied: nothing stands out
            best.append(None)
        else:
            best.append(max(means) if col.higher_is_better else min(means))
    return best


def _cell_text(cell: Cell, n_max: int, best: float | None, style: str, missing: Sequence[str] = ()) -> str:
    if cell.mean is None:
        return {"md": "–", "latex": "--"}[style]
    mean = f"{cell.mean:.2f}"
    is_best = best is not None and not missing and round(cell.mean, 2) == best
    marks = ([f"n={cell.n}"] if cell.n < n_max else []) + ([f"without {', '.join(missing)}"] if missing else [])
    if style == "md":
        text = f"**{mean}**" if is_best else mean
        text += f" ± {cell.std:.2f}" if cell.n > 1 else ""
        return text + (f" ({_md_escape('; '.join(marks))})" if marks else "")
    text = f"\\mathbf{{{mean}}}" if is_best else mean
    text += f" \\pm {cell.std:.2f}" if cell.n > 1 else ""
    return f"${text}$" + (f"\\,({latex_escape('; '.join(marks))})" if marks else "")


def _row_labels(table: Table, row: Row) -> list[str]:
    return [row.method, f"{row.tau:g}"] if table.tau_rows else [row.method]


def _markdown(table: Table) -> str:
    label_headers = ["Method", "τ"] if table.tau_rows else ["Method"]
    headers = label_headers + [c.header for c in table.columns]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join([":--"] * len(label_headers) + ["--:"] * len(table.columns)) + "|"]
    best, n_max = _best_means(table), table.max_seeds
    for row in table.rows:
        cells = [_cell_text(c, n_max, b, "md", table.missing_datasets(c)) for c, b in zip(row.cells, best)]
        labels = [_md_escape(x) for x in _row_labels(table, row)]
        lines.append("| " + " | ".join(labels + cells) + " |")
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _csv(tables: Sequence[Table]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # `datasets`: for average tables, the datasets the cell averages (space-separated); empty elsewhere.
    writer.writerow(["table", "dataset", "protocol", "kind", "method", "tau", "column", "mean", "std",
                     "n_seeds", "seeds", "datasets"])
    for t in tables:
        for row in t.rows:
            for col, cell in zip(t.columns, row.cells):
                tau = row.tau if row.tau is not None else col.tau
                writer.writerow([
                    t.key, t.dataset, t.protocol, t.kind, row.method, "" if tau is None else f"{tau:g}",
                    col.name, _csv_number(cell.mean), _csv_number(cell.std), cell.n,
                    " ".join(str(s) for s in cell.seeds), " ".join(cell.datasets),
                ])
    return buf.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "τ": r"$\tau$", "·": "--", "±": r"$\pm$", "–": "--"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (underscores in dataset and method names above all)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex(table: Table) -> str:
    n_labels = 2 if table.tau_rows else 1
    ncols = len(table.columns)
    lines = [r"\begin{table}[t]", r"  \centering",
             f"  \\caption{{{latex_escape(table.title)}. {latex_escape(table.caption)}}}",
             f"  \\label{{tab:{table.key.replace('_', '-')}}}",
             f"  \\begin{{tabular}}{{{'l' * n_labels}{'c' * ncols}}}", r"  \toprule"]
    spans = _column_groups(table.columns)
    if any(g for g, _, _ in spans):
        heads, rules = [""] * n_labels, []
        for group, start, stop in spans:
            label = _latex_group(table.columns[start])
            heads.append(f"\\multicolumn{{{stop - start}}}{{c}}{{{label}}}" if group
                         else " & ".join([""] * (stop - start)))
            if group:
                rules.append(f"\\cmidrule(lr){{{start + n_labels + 1}-{stop + n_labels}}}")
        lines.append("  " + " & ".join(heads) + r" \\")
        lines.append("  " + " ".join(rules))
    label_headers = ["Method", r"$\tau$"] if table.tau_rows else ["Method"]
    lines.append("  " + " & ".join(label_headers + [latex_escape(c.name) for c in table.columns]) + r" \\")
    lines.append(r"  \midrule")
    best, n_max = _best_means(table), table.max_seeds
    for row in table.rows:
        cells = [_cell_text(c, n_max, b, "latex", table.missing_datasets(c)) for c, b in zip(row.cells, best)]
        labels = [latex_escape(x) for x in _row_labels(table, row)]
        lines.append("  " + " & ".join(labels + cells) + r" \\")
    lines += [r"  \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def _latex_group(column: Column) -> str:
    return f"$\\tau={column.tau:g}$" if column.tau is not None else latex_escape(column.group)


def _column_groups(columns: Sequence[Column]) -> list[tuple[str, int, int]]:
    """Runs of consecutive columns sharing a group label: (label, start, stop) with stop exclusive."""
    spans: list[tuple[str, int, int]] = []
    for j, col in enumerate(columns):
        if spans and spans[-1][0] == col.group:
            spans[-1] = (col.group, spans[-1][1], j + 1)
        else:
            spans.append((col.group, j, j + 1))
    return spans
