"""Aggregation and table rendering: numbers checked against direct computations on the synthetic runs."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import METHODS, SEEDS, TAUS, accuracies, make_result, write_run

from tailprompt.report import (
    ReportError,
    load_results,
    render_table,
    render_tables,
    seed_statistics,
    summary_tables,
)


def _table(tables, kind, protocol="base_to_new"):
    return next(t for t in tables if t.kind == kind and t.protocol == protocol)


def _cell(table, method, column, tau=None):
    j = next(i for i, c in enumerate(table.columns) if c.name == column and (tau is None or c.tau == tau))
    row = next(r for r in table.rows if r.method == method)
    return row.cells[j]


def test_load_results_skips_folders_without_result(runs_dir: Path):
    results = load_results(runs_dir)
    assert len(results) == len(METHODS) * len(TAUS) * len(SEEDS)
    assert all(Path(r["_run_dir"]).name == r["run_id"] for r in results)


def test_corrupt_json_is_an_error_naming_the_file(runs_dir: Path):
    bad = runs_dir / "coop-1-2-world_colour_shape-base_to_new" / "result.json"
    bad.write_text('{"method": "coop", ', encoding="utf-8")
    with pytest.raises(ReportError, match=re.escape(str(bad)) + ".*not valid JSON"):
        load_results(runs_dir)


def test_missing_field_is_an_error_naming_file_and_field(tmp_path: Path):
    record = make_result("coop", 1.0, 1)
    del record["tau"]
    run = write_run(tmp_path, record, features=False)
    with pytest.raises(ReportError, match=f"{re.escape(str(run / 'result.json'))}.*'tau'"):
        load_results(tmp_path)


def test_base_new_hm_are_mean_and_population_std_over_seeds(runs_dir: Path):
    tables = summary_tables(load_results(runs_dir))
    acc = _table(tables, "accuracy")
    assert [(c.tau, c.name) for c in acc.columns] == [(t, n) for t in sorted(TAUS, reverse=True)
                                                      for n in ("Base", "New", "HM")]
    for method in METHODS:
        for tau in TAUS:
            base, new = np.array([accuracies(method, tau, s) for s in SEEDS]).T
            hm_per_seed = 2 * base * new / (base + new)
            for name, values in (("Base", base), ("New", new), ("HM", hm_per_seed)):
                cell = _cell(acc, method, name, tau)
                assert cell.seeds == tuple(SEEDS)
                assert cell.mean == pytest.approx(values.mean())
                assert cell.std == pytest.approx(values.std(ddof=0))
            # The data are built so that the order of operations matters: HM of means is another number.
            hm_of_means = 2 * base.mean() * new.mean() / (base.mean() + new.mean())
            assert abs(_cell(acc, method, "HM", tau).mean - hm_of_means) > 0.1


def test_group_and_calibration_tables(runs_dir: Path):
    tables = summary_tables(load_results(runs_dir))
    groups = _table(tables, "groups")
    tail = [make_result("cpt_coop", 0.06, s)["groups"]["tail"] for s in SEEDS]
    assert _cell(groups, "cpt_coop", "Tail", 0.06).mean == pytest.approx(np.mean(tail))
    cal = _table(tables, "calibration")
    ece_new = [make_result("coop", 1.0, s)["splits"]["new"]["ece"] for s in SEEDS]
    cell = _cell(cal, "coop", "ECE new", 1.0)
    assert (cell.mean, cell.std) == (pytest.approx(np.mean(ece_new)), pytest.approx(np.std(ece_new)))
    # post-hoc ECE is null in every synthetic run: no empty table is emitted
    assert not any(t.kind == "calibration_posthoc" for t in tables)


def test_markdown_table(runs_dir: Path):
    table = _table(summary_tables(load_results(runs_dir)), "accuracy")
    text = render_table(table, "md")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert header.index("τ=1 Base") < header.index("τ=0.06 Base")
    cpt = next(line for line in lines if line.startswith("| cpt_coop "))
    cell = _cell(table, "cpt_coop", "Base", 0.06)
    # cpt_coop has the higher base accuracy in every synthetic setting: bold mean, then the std
    assert f"**{cell.mean:.2f}** ± {cell.std:.2f}" in cpt
    assert all(line.count("|") == header.count("|") for line in lines if line.startswith("|"))


def test_fewer_seeds_are_flagged(runs_dir: Path):
    results = [r for r in load_results(runs_dir) if not (r["method"] == "coop" and r["tau"] == 0.06
                                                         and r["seed"] == 3)]
    table = _table(summary_tables(results), "accuracy")
    cell = _cell(table, "coop", "Base", 0.06)
    assert cell.n == 2
    assert f"{cell.mean:.2f} ± {cell.std:.2f} (n=2)" in render_table(table, "md")


def test_csv_long_format_round_trips_the_numbers(runs_dir: Path):
    tables = summary_tables(load_results(runs_dir))
    rows = list(csv.DictReader(io.StringIO(render_tables(tables, "csv"))))
    assert len(rows) == sum(len(t.rows) * len(t.columns) for t in tables)
    hm = next(r for r in rows if r["method"] == "coop" and r["tau"] == "0.06" and r["column"] == "HM")
    cell = _cell(_table(tables, "accuracy"), "coop", "HM", 0.06)
    assert float(hm["mean"]) == pytest.approx(cell.mean, abs=1e-6)
    assert float(hm["std"]) == pytest.approx(cell.std, abs=1e-6)
    assert (hm["n_seeds"], hm["seeds"]) == ("3", "1 2 3")


def test_latex_is_booktabs_with_escaped_names(runs_dir: Path):
    table = _table(summary_tables(load_results(runs_dir)), "accuracy")
    tex = render_table(table, "latex")
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{3}{c}{$\tau=1$}",
                    r"\cmidrule(lr){2-4}"):
        assert command in tex
    assert r"cpt\_coop" in tex and r"world\_colour\_shape" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    for line in body.strip().splitlines():
        assert line.count("&") == len(table.columns)  # one label column + one per metric
        assert not re.search(r"(?<!\\)_", line)


def test_cross_dataset_columns_follow_targets_and_average_per_seed(tmp_path: Path):
    targets = ["world_texture_shape", "world_size_colour_shape"]
    for method in METHODS:
        for seed in SEEDS:
            r = make_result(method, 0.06, seed, protocol="cross_dataset")
            blocks = r["splits"]
            r["splits"] = {"source": blocks["base"],
                           targets[1]: dict(blocks["new"], accuracy=30.0 + 2 * seed),
                           targets[0]: dict(blocks["new"], accuracy=40.0 + seed ** 2)}
            r["config"]["protocol"]["targets"] = targets
            write_run(tmp_path, r, features=False)
    table = _table(summary_tables(load_results(tmp_path)), "accuracy", "cross_dataset")
    assert [c.name for c in table.columns] == ["Source", *targets, "Average"]
    avg = [(40.0 + s ** 2 + 30.0 + 2 * s) / 2 for s in SEEDS]
    cell = _cell(table, "coop", "Average")
    assert (cell.mean, cell.std) == (pytest.approx(np.mean(avg)), pytest.approx(np.std(avg)))


def test_duplicate_runs_keep_the_newest(tmp_path: Path):
    old = write_run(tmp_path, make_result("coop", 1.0, 1, run_id="a-old"), features=False)
    new = write_run(tmp_path, make_result("coop", 1.0, 1, run_id="b-new"), features=False)
    data = json.loads((new / "result.json").read_text())
    data["splits"]["base"]["accuracy"] = 99.0
    (new / "result.json").write_text(json.dumps(data))
    os.utime(old / "result.json", (1_000_000, 1_000_000))
    cell = _cell(_table(summary_tables(load_results(tmp_path)), "accuracy"), "coop", "Base", 1.0)
    assert cell.values == (99.0,)


def test_seed_statistics_cover_every_metric(runs_dir: Path):
    stats = seed_statistics(load_results(runs_dir))
    entry = next(e for e in stats if e["method"] == "coop" and e["tau"] == 0.06)
    m = entry["metrics"]
    for name in ("splits/base/accuracy", "splits/new/ece", "splits/base/nll", "hm", "groups/tail",
                 "geometry/learned/effective_rank", "timings/train_s", "loss_final/total"):
        assert name in m, name
    assert m["timings/train_s"]["mean"] == pytest.approx(np.mean([1.0 * s for s in SEEDS]))
    assert m["geometry/learned/delta_lcd"]["std"] == pytest.approx(np.std([0.1 * s for s in SEEDS]))
    assert m["hm"]["values"] == {str(s): pytest.approx(2 * b * n / (b + n))
                                 for s, (b, n) in ((s, accuracies("coop", 0.06, s)) for s in SEEDS)}
    assert "splits/base/ece_dac" not in m  # null in every run: not a metric


def test_row_order_zero_shot_then_plain_learners_then_plug_ins(tmp_path: Path):
    for method, learner in (("tcpt_coop", "coop"), ("coop", "coop"), ("zeroshot", "zeroshot"),
                            ("cpt_coop", "coop"), ("kgcoop", "kgcoop")):
        write_run(tmp_path, make_result(method, 1.0, 1, learner=learner), features=False)
    table = _table(summary_tables(load_results(tmp_path)), "accuracy")
    assert [r.method for r in table.rows] == ["zeroshot", "coop", "kgcoop", "cpt_coop", "tcpt_coop"]
    table = _table(summary_tables(load_results(tmp_path), order=["cpt_coop"]), "accuracy")
    assert [r.method for r in table.rows][0] == "cpt_coop"

