"""The "Average over N datasets" tables: numbers checked against a direct numpy computation."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from report_fixtures import METHODS, SEEDS, TAUS, accuracies, make_result, write_run

from tailprompt.report import load_results, render_table, render_tables, summary_tables, write_report

DATASETS = ["world_a", "world_b", "world_c"]
# Per-dataset shifts in opposite directions for base and new: the mean over datasets of the HM is
# then far from the HM of the mean base and mean new accuracy.
BASE_SHIFT = [0.0, -25.0, -1.0]
NEW_SHIFT = [0.0, 30.0, -14.0]
ECE_SHIFT = [0.0, 2.5, 7.0]


def base_new(method: str, tau: float, seed: int, d: int) -> tuple[float, float]:
    base, new = accuracies(method, tau, seed)
    return base + BASE_SHIFT[d] + 0.7 * seed * d, new + NEW_SHIFT[d] - 0.4 * seed * d


def dataset_result(method: str, tau: float, seed: int, d: int, protocol: str = "base_to_new") -> dict[str, Any]:
    record = make_result(method, tau, seed, dataset=DATASETS[d], protocol=protocol)
    base, new = base_new(method, tau, seed, d)
    splits = record["splits"]
    splits["base"]["accuracy"], splits["new"]["accuracy"] = base, new
    splits["base"]["ece"] += ECE_SHIFT[d]
    splits["new"]["ece"] += 2 * ECE_SHIFT[d]
    record["hm"] = 2 * base * new / (base + new)
    if protocol == "all_classes":  # one split over all classes: accuracy in between base and new
        record["splits"] = {"all": dict(splits["base"], accuracy=(base + 2 * new) / 3)}
        record["hm"] = None
    return record


def records(datasets: range | list[int] = range(3), protocol: str = "base_to_new") -> list[dict[str, Any]]:
    return [dataset_result(m, t, s, d, protocol) for d in datasets for m in METHODS for t in TAUS for s in SEEDS]


def grid(method: str, tau: float, d_list: range | list[int] = range(3)) -> tuple[np.ndarray, np.ndarray]:
    """Base and new accuracy as [datasets, seeds] arrays."""
    pairs = np.array([[base_new(method, tau, s, d) for s in SEEDS] for d in d_list])
    return pairs[..., 0], pairs[..., 1]


def _cell(table, method, column, tau):
    j = next(i for i, c in enumerate(table.columns) if c.name == column and c.tau == tau)
    return next(r for r in table.rows if r.method == method).cells[j]


def _average(tables, kind, protocol="base_to_new"):
    return next(t for t in tables if t.dataset == "average" and t.kind == kind and t.protocol == protocol)


def test_average_over_datasets_is_hm_per_dataset_then_mean_then_seed_statistics():
    tables = summary_tables(records())
    acc = tables[0]  # the average comes first in its setting
    assert (acc.dataset, acc.kind, acc.datasets) == ("average", "accuracy", DATASETS)
    assert acc.title.startswith("Average over 3 datasets")
    assert "world_a, world_b, world_c" in acc.caption
    assert [(c.tau, c.name) for c in acc.columns] == [(t, n) for t in sorted(TAUS, reverse=True)
                                                      for n in ("Base", "New", "HM")]
    for method in METHODS:
        for tau in TAUS:
            base, new = grid(method, tau)  # [D, S]
            hm = 2 * base * new / (base + new)  # per dataset and seed
            for name, per_dataset in (("Base", base), ("New", new), ("HM", hm)):
                per_seed = per_dataset.mean(axis=0)
                cell = _cell(acc, method, name, tau)
                assert cell.seeds == tuple(SEEDS) and cell.datasets == tuple(DATASETS)
                assert cell.values == pytest.approx(per_seed)
                assert (cell.mean, cell.std) == (pytest.approx(per_seed.mean()), pytest.approx(per_seed.std()))
            # HM of the dataset-averaged accuracies is a different number: the design says per dataset first
            b, n = base.mean(axis=0), new.mean(axis=0)
            assert abs(_cell(acc, method, "HM", tau).mean - np.mean(2 * b * n / (b + n))) > 1.0


def test_average_calibration_table_averages_ece_per_seed():
    cal = _average(summary_tables(records()), "calibration")
    assert [c.name for c in cal.columns] == ["ECE base", "ECE new"] * len(TAUS)
    for method in METHODS:
        for tau in TAUS:
            ece = np.array([[dataset_result(method, tau, s, d)["splits"]["new"]["ece"] for s in SEEDS]
                            for d in range(3)])
            cell = _cell(cal, method, "ECE new", tau)
            assert cell.mean == pytest.approx(ece.mean(axis=0).mean())
            assert cell.std == pytest.approx(ece.mean(axis=0).std())


def test_all_classes_average_has_acc_per_tau():
    tables = summary_tables(records([0, 2], "all_classes"))
    acc = _average(tables, "accuracy", "all_classes")
    assert acc.title.startswith("Average over 2 datasets") and acc.datasets == ["world_a", "world_c"]
    assert [(c.tau, c.name) for c in acc.columns] == [(t, "Acc") for t in sorted(TAUS, reverse=True)]
    base, new = grid("cpt_coop", 0.06, [0, 2])
    per_seed = ((base + 2 * new) / 3).mean(axis=0)
    cell = _cell(acc, "cpt_coop", "Acc", 0.06)
    assert (cell.mean, cell.std) == (pytest.approx(per_seed.mean()), pytest.approx(per_seed.std()))
    assert [c.name for c in _average(tables, "calibration", "all_classes").columns] == ["ECE"] * len(TAUS)


def test_one_dataset_or_no_method_on_two_datasets_gives_no_average(runs_dir: Path):
    assert not any(t.dataset == "average" or t.datasets for t in summary_tables(load_results(runs_dir)))
    # two datasets, but each method was run on only one of them: nothing to average per method
    split = [r for r in records([0, 1]) if (r["method"] == "coop") == (r["dataset"] == "world_a")]
    tables = summary_tables(split)
    assert {t.dataset for t in tables} == {"world_a", "world_b"}


def test_missing_dataset_is_marked_and_missing_seed_is_dropped():
    kept = [r for r in records()
            if not (r["method"] == "coop" and r["dataset"] == "world_c")
            and not (r["method"] == "cpt_coop" and r["dataset"] == "world_b" and r["tau"] == 0.06
                     and r["seed"] == 3)]
    acc = _average(summary_tables(kept), "accuracy")
    assert acc.datasets == DATASETS
    # coop: every seed averaged over the two datasets it was run on
    base, new = grid("coop", 1.0, [0, 1])
    partial = _cell(acc, "coop", "HM", 1.0)
    assert partial.datasets == ("world_a", "world_b")
    assert partial.mean == pytest.approx((2 * base * new / (base + new)).mean(axis=0).mean())
    # cpt_coop at tau 0.06: seed 3 lacks world_b, so only seeds 1 and 2 count, over all three datasets
    base, new = grid("cpt_coop", 0.06)
    cell = _cell(acc, "cpt_coop", "Base", 0.06)
    assert cell.seeds == (1, 2) and cell.datasets == tuple(DATASETS)
    assert cell.values == pytest.approx(base[:, :2].mean(axis=0))
    text = render_table(acc, "md")
    coop = next(line for line in text.splitlines() if line.startswith("| coop "))
    assert coop.count("(without world_c)") == len(acc.columns)
    assert "**" not in coop  # a partial average is never bold, even where its mean is the highest
    cpt = next(line for line in text.splitlines() if line.startswith("| cpt_coop "))
    assert f"{cell.mean:.2f} ± {cell.std:.2f} (n=2)" in cpt
    tex = render_table(acc, "latex")
    assert r"\,(without world\_c)" in tex and r"\,(n=2)" in tex


def test_outputs_put_the_average_first_per_setting(tmp_path: Path):
    runs = tmp_path / "runs"
    for r in records([0, 1]) + records([0, 1], "all_classes"):
        write_run(runs, r, features=False)
    write_report(runs, tmp_path / "csv", fmt="csv", plots=False)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "csv" / "tables.csv").read_text())))
    order = list(dict.fromkeys((r["protocol"], r["dataset"]) for r in rows))
    assert order == [("all_classes", "average"), ("all_classes", "world_a"), ("all_classes", "world_b"),
                     ("base_to_new", "average"), ("base_to_new", "world_a"), ("base_to_new", "world_b")]
    hm = next(r for r in rows if r["dataset"] == "average" and r["method"] == "coop" and r["tau"] == "0.06"
              and r["column"] == "HM")
    base, new = grid("coop", 0.06, [0, 1])
    per_seed = (2 * base * new / (base + new)).mean(axis=0)
    assert float(hm["mean"]) == pytest.approx(per_seed.mean(), abs=1e-6)
    assert (hm["n_seeds"], hm["datasets"]) == ("3", "world_a world_b")
    assert all(r["datasets"] == "" for r in rows if r["dataset"] != "average")

    summary = json.loads((tmp_path / "csv" / "summary.json").read_text())
    keys = [t["key"] for t in summary["tables"]]
    last_all_classes = max(i for i, k in enumerate(keys) if "__all_classes__" in k)
    assert keys.index("average__base_to_new__accuracy") == last_all_classes + 1
    table = summary["tables"][keys.index("average__base_to_new__accuracy")]
    assert table["datasets"] == ["world_a", "world_b"]
    j = next(i for i, c in enumerate(table["columns"]) if c["name"] == "HM" and c["tau"] == 0.06)
    cell = next(r for r in table["rows"] if r["method"] == "coop")["cells"][j]
    assert cell["values"] == {str(s): pytest.approx(v) for s, v in zip(SEEDS, per_seed)}
    assert cell["datasets"] == ["world_a", "world_b"]

    write_report(runs, tmp_path / "md", fmt="md", plots=False)
    headings = [line for line in (tmp_path / "md" / "tables.md").read_text().splitlines()
                if line.startswith("### ")]
    assert headings[0].startswith("### Average over 2 datasets · all classes")
    assert sum("Average over 2 datasets" in h for h in headings) == 4  # accuracy + calibration per protocol
    tex = render_tables(summary_tables(load_results(runs), extra=True), "latex")
    assert tex.count(r"\begin{tabular}") == len(summary["tables"])
    assert "Averaged over 2 datasets: world\\_a, world\\_b." in tex
