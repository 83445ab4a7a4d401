"""Seed statistics: per-run metrics, then mean ± std over seeds.

Derived numbers (HM, the average over target datasets, the average over evaluated datasets) are
computed per seed first and only then averaged, so that every cell has a spread over seeds. The average
over datasets takes each dataset's own HM ("HM per dataset, then averaged over datasets", design.md §8),
never the HM of averaged base / new accuracy. The papers' layouts (`layouts.py`) print the papers' own
per-dataset HM instead, the HM of the seed-mean accuracies (`papers_hm_cell`), with the same spread.
The spread is the population standard deviation over seeds (numpy's default, `ddof=0`), the
convention of the reference's `parse_test_res.py` (Dassl) that CoOp, MaPLe and KgCoOp report with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tailprompt.report.results import (
    experiment_layout,
    group_names,
    grouped_by_experiment,
    method_order,
    split_roles,
    tau_key,
)

Metric = Callable[[dict[str, Any]], "float | None"]

# Per-split fields aggregated into summary.json (scalars of the split block).
_SPLIT_SCALARS = ("accuracy", "ece", "mce", "aece", "nll", "ece_temperature_scaled", "temperature", "ece_dac")


@dataclass(frozen=True)
class Cell:
    """One table cell: a metric's value for each seed that has it, in seed order.

    `datasets` is set for a cell of an average over datasets: the datasets each of its per-seed
    values averages (the same for every seed of the cell).
    """

    seeds: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    datasets: tuple[str, ...] = ()
    # The cell's number when it is not the mean of `values` (a paper's HM of seed-mean accuracies);
    # `values` then give the seeds and the spread.
    headline: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        if self.headline is not None:
            return self.headline
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        """Population std over seeds (ddof=0, as Dassl's parse_test_res.py); None without values."""
        return float(np.std(self.values)) if self.values else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": self.mean, "std": self.std, "n": self.n,
                               "values": {str(s): v for s, v in zip(self.seeds, self.values)}}
        if self.datasets:
            out["datasets"] = list(self.datasets)
        return out


def seed_cell(records: Sequence[dict[str, Any]], metric: Metric) -> Cell:
    """Evaluate `metric` on each record (one per seed) and keep the seeds where it is defined."""
    pairs = sorted((r["seed"], metric(r)) for r in records)
    kept = [(s, float(v)) for s, v in pairs if v is not None and math.isfinite(float(v))]
    return Cell(tuple(s for s, _ in kept), tuple(v for _, v in kept))


def dataset_average_cell(records: Sequence[dict[str, Any]], metric: Metric) -> Cell:
    """Per seed, the mean of `metric` over datasets; the cell then holds those per-seed means.

    `records` are the runs of one method at one tau on several datasets (at most one per dataset
    and seed, as `deduplicated` leaves them). `metric` is evaluated on each run, so a derived
    number such as HM is computed per dataset and per seed before it is averaged over datasets.

    The cell's datasets are those where the method has the metric for at least one seed; a seed
    counts only if it has the metric on every one of them, so that every per-seed value averages
    the same datasets (a seed still missing on one dataset would otherwise shift the mean by the
    datasets' difference, not by the seed's). Seeds missing somewhere show as a smaller `n`.

    Returns:
        A `Cell` with `datasets` set (sorted); empty values when no seed covers every dataset.
    """
    per_dataset: dict[str, dict[int, float]] = {}
    for r in records:
        value = _number(metric(r))
        if value is not None:
            per_dataset.setdefault(r["dataset"], {})[r["seed"]] = value
    if not per_dataset:
        return Cell()
    datasets = sorted(per_dataset)
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in per_dataset.values())))
    values = tuple(float(np.mean([per_dataset[d][s] for d in datasets])) for s in seeds)
    return Cell(tuple(seeds), values, tuple(datasets))


def papers_hm_cell(records: Sequence[dict[str, Any]]) -> Cell:
    """The base-to-new HM of the papers' tables: per dataset the HM of the seed-mean base and new accuracies
    (CoCoOp's, MaPLe's and CPT's per-dataset H reproduce from their printed means), then the mean over
    datasets. The seeds and the spread are those of the per-seed dataset-average HMs
    (`dataset_average_cell` of `base_new_hm`), whose seeds the headline averages over.
    """
    spread = dataset_average_cell(records, base_new_hm)
    if not spread.values:
        return spread
    per_dataset = []
    for dataset in spread.datasets:
        runs = [r for r in records if r["dataset"] == dataset and r["seed"] in spread.seeds]
        pairs = [(split_value(p[0], "accuracy")(r), split_value(p[1], "accuracy")(r))
                 for r in runs if (p := harmonic_pair(r)) is not None]
        pairs = [(b, n) for b, n in pairs if b is not None and n is not None]
        if len(pairs) != len(runs):  # a run whose HM is recorded without its accuracies
            return spread
        per_dataset.append(harmonic_mean(float(np.mean([b for b, _ in pairs])), float(np.mean([n for _, n in pairs]))))
    return Cell(spread.seeds, spread.values, spread.datasets, headline=float(np.mean(per_dataset)))


def harmonic_mean(a: float, b: float) -> float:
    """HM = 2ab / (a + b) (base-to-new's summary number); 0 when both are 0."""
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def split_value(split: str, field: str) -> Metric:
    """Metric reading `splits.<split>.<field>` (None where the run has no such split or value)."""

    def read(record: dict[str, Any]) -> float | None:
        value = (record["splits"].get(split) or {}).get(field)
        return _number(value)

    return read


def harmonic_pair(record: dict[str, Any]) -> tuple[str, str] | None:
    """The run's two splits whose harmonic mean is its headline (roles `harmonic_mean`), or None."""
    names = [n for n, role in split_roles(record).items() if role.harmonic_mean]
    return (names[0], names[1]) if len(names) == 2 else None


def base_new_hm(record: dict[str, Any]) -> float | None:
    """The run's HM of its harmonic-mean splits' accuracies (base and new), computed per seed."""
    pair = harmonic_pair(record)
    if pair is None:
        return None
    a = _number((record["splits"].get(pair[0]) or {}).get("accuracy"))
    b = _number((record["splits"].get(pair[1]) or {}).get("accuracy"))
    if a is None or b is None:
        return _number(record.get("hm"))
    return harmonic_mean(a, b)


def group_value(group: str) -> Metric:
    """Metric reading a class group's accuracy (`groups.<group>`: head / medium / tail, many / medium / few)."""

    def read(record: dict[str, Any]) -> float | None:
        return _number((record.get("groups") or {}).get(group))

    return read


def record_value(*path: str) -> Metric:
    """Metric reading a nested number of the record, e.g. `record_value("geometry", "learned", "lcd")`."""

    def read(record: dict[str, Any]) -> float | None:
        node: Any = record
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return _number(node)

    return read


def target_average(targets: Sequence[str], field: str = "accuracy") -> Metric:
    """Mean of `field` over the target splits of one run; None unless every target is present."""

    def read(record: dict[str, Any]) -> float | None:
        values = [split_value(t, field)(record) for t in targets]
        if not values or any(v is None for v in values):
            return None
        return float(np.mean(values))

    return read


def record_metrics(record: dict[str, Any], targets: Sequence[str] = ()) -> dict[str, float]:
    """Every scalar metric of one run, flattened to `block/.../name` keys (summary.json's rows).

    Covers the split scalars, HM (recomputed), head/medium/tail, the geometry block, the timings,
    the number of clusters, the last value of each loss curve and, for transfer protocols, the
    average over targets.
    """
    out: dict[str, float] = {}
    for name, split in record["splits"].items():
        for field in _SPLIT_SCALARS:
            value = _number((split or {}).get(field))
            if value is not None:
                out[f"splits/{name}/{field}"] = value
    hm = base_new_hm(record)
    if hm is not None:
        out["hm"] = hm
    for group in group_names([record]):
        value = group_value(group)(record)
        if value is not None:
            out[f"groups/{group}"] = value
    _flatten_numbers(record.get("geometry"), "geometry", out)
    _flatten_numbers(record.get("timings"), "timings", out)
    clusters = record.get("clusters")
    if isinstance(clusters, dict) and _number(clusters.get("n_clusters")) is not None:
        out["clusters/n_clusters"] = float(clusters["n_clusters"])
    for term, curve in (record.get("loss_curve") or {}).items():
        if isinstance(curve, list) and curve and _number(curve[-1]) is not None:
            out[f"loss_final/{term}"] = float(curve[-1])
    if targets:
        for field in ("accuracy", "ece"):
            value = target_average(targets, field)(record)
            if value is not None:
                out[f"targets_average/{field}"] = value
    return out


def seed_statistics(results: Sequence[dict[str, Any]],
                    preferred_order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every metric, one entry per (experiment, method, tau).

    Returns:
        Plain dicts: experiment fields, `method`, `tau`, `seeds`, `run_ids` and `metrics`
        (`{name: {"mean", "std", "n", "values": {seed: value}}}`).
    """
    entries = []
    for key, records in grouped_by_experiment(results).items():
        targets = list(experiment_layout(records).targets)
        for method in method_order(records, preferred_order):
            rows = [r for r in records if r["method"] == method]
            for tau in sorted({tau_key(r["tau"]) for r in rows}, reverse=True):
                cell_runs = sorted((r for r in rows if tau_key(r["tau"]) == tau), key=lambda r: r["seed"])
                per_run = [record_metrics(r, targets) for r in cell_runs]
                names = sorted({n for m in per_run for n in m})
                metrics = {}
                for name in names:
                    pairs = [(r["seed"], m[name]) for r, m in zip(cell_runs, per_run) if name in m]
                    metrics[name] = Cell(tuple(s for s, _ in pairs), tuple(v for _, v in pairs)).to_dict()
                entries.append({
                    "dataset": key.dataset, "protocol": key.protocol, "backbone": key.backbone,
                    "shots": key.shots, "method": method, "tau": tau,
                    "seeds": [r["seed"] for r in cell_runs],
                    "run_ids": [r.get("run_id") for r in cell_runs],
                    "metrics": metrics,
                })
    return entries


def _flatten_numbers(node: Any, prefix: str, out: dict[str, float]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten_numbers(v, f"{prefix}/{k}", out)
        return
    value = _number(node)
    if value is not None:
        out[prefix] = value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


__all__ = ["Cell", "base_new_hm", "dataset_average_cell", "harmonic_mean", "harmonic_pair", "papers_hm_cell",
           "record_metrics", "record_value", "seed_cell", "seed_statistics", "split_value", "target_average"]
