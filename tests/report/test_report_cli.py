"""The `tailprompt report` command, `write_report` and the plot helpers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import SEEDS, accuracies, make_result, reliability, write_run

from tailprompt.cli import main
from tailprompt.report import ReportError, write_report
from tailprompt.report.plots import cluster_order, ece_from_bins, pooled_reliability, shot_accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cli_writes_tables_summary_and_plots(runs_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["report", str(runs_dir), "--format", "csv", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    stem = "world_colour_shape__base_to_new"
    assert names == sorted(["tables.csv", "summary.json", f"{stem}__reliability_tau0.06_pooled-seeds.png",
                            f"{stem}__cosine_tau0.06_seed1.png", f"{stem}__accuracy_vs_shots.png",
                            f"{stem}__seed_spread.png"])  # and no temporary files left behind
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_runs"] == 12
    entry = next(e for e in summary["experiments"] if e["method"] == "cpt_coop" and e["tau"] == 1.0)
    hm = [2 * b * n / (b + n) for b, n in (accuracies("cpt_coop", 1.0, s) for s in SEEDS)]
    assert entry["metrics"]["hm"]["mean"] == pytest.approx(np.mean(hm))
    assert entry["metrics"]["hm"]["std"] == pytest.approx(np.std(hm))
    assert {t["kind"] for t in summary["tables"]} == {"accuracy", "groups", "calibration", "calibration_more",
                                                      "geometry"}


def test_cli_default_out_and_markdown_printed(runs_dir: Path, capsys):
    assert main(["report", str(runs_dir), "--no-plots"]) == 0
    text = (runs_dir / "report" / "tables.md").read_text()
    assert "| Method | τ=1 Base |" in text
    assert text.strip() in capsys.readouterr().out
    assert not list((runs_dir / "report").glob("*.png"))
    # the report folder itself has no result.json: a second report over the same folder still works
    assert main(["report", str(runs_dir), "--no-plots", "--format", "latex"]) == 0
    assert (runs_dir / "report" / "tables.tex").read_text().count(r"\begin{tabular}") == 5  # + MCE/aECE/NLL, geometry


def test_cli_errors_are_one_line_exit_2(runs_dir: Path, tmp_path: Path, capsys):
    bad = runs_dir / "coop-1-1-world_colour_shape-base_to_new" / "result.json"
    bad.write_text("not json")
    assert main(["report", str(runs_dir), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not valid JSON" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--no-plots"]) == 2
    assert "no run folder holds a result.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_missing_matplotlib_is_a_clear_error(runs_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ReportError, match=r"tailprompt\[plot\]"):
        write_report(runs_dir, tmp_path / "a")
    assert not (tmp_path / "a").exists()  # failed before writing anything
    paths = write_report(runs_dir, tmp_path / "b", plots=False)
    assert [p.name for p in paths] == ["tables.md", "summary.json"]


def test_pooled_reliability_weights_bins_by_count_and_rescales_percent():
    a, b = reliability(1), reliability(2, scale=100.0)  # the second stored in percent
    pooled = pooled_reliability([a, b])
    n_a, n_b = np.array(a["counts"], float), np.array(b["counts"], float)
    n = n_a + n_b
    expected_acc = (n_a * np.array(a["accuracy"]) + n_b * np.array(b["accuracy"]) / 100) / np.maximum(n, 1)
    filled = n > 0
    assert np.allclose(pooled["counts"], n_a + n_b)
    assert np.allclose(pooled["accuracy"][filled], expected_acc[filled])
    assert pooled["bin_edges"].max() == pytest.approx(1.0)
    gaps = np.abs(pooled["accuracy"] - pooled["confidence"])[filled]
    assert ece_from_bins(pooled) == pytest.approx(100 * np.sum(n[filled] * gaps) / n.sum())
    assert pooled_reliability([None, {}]) is None


def test_cluster_order_uses_recorded_clusters_or_kmeans():
    names = ["a", "b", "c", "d", "e", "f"]
    record = {"clusters": {"assignment": {"a": 1, "b": 0, "c": 1, "d": 0, "e": 2, "f": 2}}}
    frozen = np.eye(6)
    order, ordered, how = cluster_order(frozen, [record], names)
    assert order.tolist() == [1, 3, 0, 2, 4, 5] and ordered.tolist() == [0, 0, 1, 1, 2, 2]
    assert "recorded" in how
    as_list = {"clusters": {"assignment": [1, 0, 1, 0, 2, 2]}}
    assert cluster_order(frozen, [as_list], names)[0].tolist() == [1, 3, 0, 2, 4, 5]
    # no clusters recorded: K-means on two well separated groups (classes 0, 2, 4 vs 1, 3, 5)
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    feats = centres[[0, 1, 0, 1, 0, 1]] + 0.01 * rng.standard_normal((6, 4))
    order, ordered, how = cluster_order(feats, [{"clusters": None}], names)
    assert "K-means" in how
    assert {frozenset(order[:3].tolist()), frozenset(order[3:].tolist())} == {frozenset({0, 2, 4}),
                                                                            frozenset({1, 3, 5})}


def test_shot_accuracy_groups_classes_by_training_shots():
    runs = [make_result("coop", 0.06, s) for s in SEEDS]
    curve = shot_accuracy(runs, "base")
    counts = runs[0]["sampling"]["counts"]
    assert sorted(curve) == sorted(set(counts.values()))
    one_shot = [c for c, n in counts.items() if n == 1]
    expected = np.mean([r["splits"]["base"]["per_class_accuracy"][c] for r in runs for c in one_shot])
    assert curve[1] == pytest.approx(expected)


def test_runs_without_features_still_get_the_other_plots(tmp_path: Path):
    for seed in SEEDS:
        write_run(tmp_path / "runs", make_result("coop", 0.25, seed), features=False)
    names = {p.name for p in write_report(tmp_path / "runs", tmp_path / "out")}
    assert not any("cosine" in n for n in names)
    assert "world_colour_shape__base_to_new__seed_spread.png" in names


@pytest.mark.parametrize("field, value, message", [
    ("config", 5, "field 'config' should be dict or null, got 5"),
    ("loss_curve", [1.0], "field 'loss_curve' should be dict or null, got [1.0]"),
    ("groups", [1], "field 'groups' should be dict or null"),
    ("hm", "nan", "field 'hm' should be int or float or null, got 'nan'"),
    ("shots", "16", "field 'shots' should be int or null, got '16'"),
    ("split_roles", "base", "field 'split_roles' should be dict or null"),
    ("sampling", {"counts": [1, 2]}, "sampling.counts should be dict, got [1, 2]"),
    ("splits.base.per_class_accuracy", [1], "splits.base.per_class_accuracy should be dict, got [1]"),
    ("splits.base.reliability", "x", "splits.base.reliability should be dict, got 'x'"),
    ("splits.base.classnames", "red", "splits.base.classnames should be list, got 'red'"),
    ("splits.base.accuracy", float("nan"), "splits.base.accuracy should be a percentage in [0, 100], got nan"),
    ("splits.new.accuracy", 250.0, "splits.new.accuracy should be a percentage in [0, 100], got 250.0"),
    ("splits.new.ece", "5", "splits.new.ece should be a percentage in [0, 100], got '5'"),
    ("tau", 0.0, "field 'tau' should be an imbalance ratio in (0, 1], got 0.0"),
    ("tau", -1.0, "field 'tau' should be an imbalance ratio in (0, 1], got -1.0"),
    ("splits", {}, "field 'splits' is empty"),
    ("splits.new", None, "splits.new.accuracy should be a number"),
])
def test_a_record_field_of_the_wrong_type_is_one_line_and_nothing_is_written(runs_dir: Path, tmp_path: Path,
                                                                               capsys, field, value, message):
    """Checked before any table or plot is written, so a bad record leaves no partial report."""
    path = runs_dir / "coop-1-1-world_colour_shape-base_to_new" / "result.json"
    record = json.loads(path.read_text())
    *parents, last = field.split(".")
    node = record
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(json.dumps(record))
    out = tmp_path / "report"
    assert main(["report", str(runs_dir), "--out", str(out), "--html"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and f"{path}: {message}" in err[0]
    assert not out.exists()


def test_html_report_of_a_relative_runs_folder_links_the_runs(runs_dir: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(runs_dir.parent)
    assert main(["report", runs_dir.name, "--no-plots", "--html", "--out", "out"]) == 0
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert f"href='{(runs_dir / 'coop-1-1-world_colour_shape-base_to_new').as_uri()}'" in html


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_a_report_folder_that_cannot_be_written_is_one_line(runs_dir: Path, tmp_path: Path, capsys, where):
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "report" if where == "under a file" else tmp_path / "file.txt"
    assert main(["report", str(runs_dir), "--no-plots", "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and f"{out}: report folder is not writable" in err[0] and "--out" in err[0]
