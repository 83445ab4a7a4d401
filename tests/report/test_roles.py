"""The report lays out tables from the split roles a record declares, not from protocol names."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fixtures import BASE, NEW, make_result, write_run

from tailprompt.report import load_results, render_table, summary_tables
from tailprompt.report.aggregate import base_new_hm, record_metrics
from tailprompt.report.results import experiment_key, experiment_layout


def _seen_unseen(method: str, seed: int, tau: float = 1.0) -> dict:
    """A protocol the report has never heard of: 'seen' / 'unseen' splits forming a harmonic mean."""
    r = make_result(method, tau, seed, protocol="open_world")
    r["splits"] = {"seen": r["splits"]["base"], "unseen": r["splits"]["new"]}
    r["split_roles"] = {"seen": {"label": "Seen", "training": True, "harmonic_mean": True, "target": False},
                        "unseen": {"label": "Unseen", "training": False, "harmonic_mean": True, "target": False}}
    r["protocol_label"] = "open world"
    return r


def test_a_new_protocol_with_a_harmonic_pair_gets_the_base_to_new_layout(tmp_path: Path):
    for seed in (1, 2):
        write_run(tmp_path, _seen_unseen("coop", seed), features=False)
    records = load_results(tmp_path)
    layout = experiment_layout(records)
    assert layout.splits == ("seen", "unseen") and layout.harmonic == ("seen", "unseen") and not layout.targets
    tables = summary_tables(records)
    acc = next(t for t in tables if t.kind == "accuracy")
    assert [c.name for c in acc.columns] == ["Seen", "Unseen", "HM"]
    assert "open world" in acc.title and "on seen and unseen classes and their harmonic mean" in acc.caption
    hm = acc.rows[0].cells[2]
    expected = [base_new_hm(r) for r in sorted(records, key=lambda r: r["seed"])]
    assert hm.values == pytest.approx(expected) and None not in expected
    calib = next(t for t in tables if t.kind == "calibration")
    assert [c.name for c in calib.columns] == ["ECE seen", "ECE unseen"]


def test_a_new_protocol_with_targets_gets_the_transfer_layout(tmp_path: Path):
    r = make_result("coop", 1.0, 1, protocol="leave_one_out")
    r["splits"] = {"train": r["splits"]["base"], "x": r["splits"]["new"], "y": r["splits"]["new"]}
    r["split_roles"] = {"train": {"label": "Train", "training": True},
                        "x": {"label": "x", "target": True}, "y": {"label": "y", "target": True}}
    write_run(tmp_path, r, features=False)
    tables = summary_tables(load_results(tmp_path))
    acc = next(t for t in tables if t.kind == "accuracy")
    assert [c.name for c in acc.columns] == ["Train", "x", "y", "Average"]
    assert "hm" not in record_metrics(r)


def test_records_without_roles_keep_the_shipped_protocols_layout(runs_dir: Path):
    records = load_results(runs_dir)
    assert all("split_roles" not in r for r in records)
    layout = experiment_layout(records)
    assert layout.training == "base" and layout.harmonic == ("base", "new")


def test_result_files_are_found_at_any_depth(tmp_path: Path):
    write_run(tmp_path / "sweep_a" / "coop", make_result("coop", 1.0, 1), features=False)
    write_run(tmp_path / "sweep_b", make_result("coop", 1.0, 2), features=False)
    records = load_results(tmp_path)
    assert sorted(r["seed"] for r in records) == [1, 2]


def test_threshold_groups_are_labelled_many_medium_few(tmp_path: Path):
    r = make_result("coop", 1.0, 1, protocol="all_classes", shots=100000)
    r["splits"] = {"all": r["splits"]["base"]}
    r["groups"] = {"many": 70.0, "medium": 60.0, "few": 40.0, "classes": {}}
    write_run(tmp_path, r, features=False)
    records = load_results(tmp_path)
    acc = next(t for t in summary_tables(records) if t.kind == "accuracy")
    assert [c.name for c in acc.columns] == ["Acc", "Many", "Medium", "Few"]
    # the shot cap is above every class's count: the title says full data, not "100000-shot"
    assert experiment_key(records[0]).full_data
    text = render_table(acc, "md")
    assert "full data" in text and "100000-shot" not in text


def test_report_files_tabulate_mce_aece_nll_and_geometry(tmp_path: Path):
    r = make_result("coop", 1.0, 1)
    r["geometry"] = {"learned": {"lcd": 0.2, "effective_rank": 5.0, "cluster_etf_gap": 0.1},
                     "image": {"mid": 0.7}}
    write_run(tmp_path, r, features=False)
    tables = summary_tables(load_results(tmp_path), extra=True)
    more = next(t for t in tables if t.kind == "calibration_more")
    assert [c.name for c in more.columns] == ["MCE base", "MCE new", "aECE base", "aECE new", "NLL base", "NLL new"]
    assert more.rows[0].cells[0].mean == pytest.approx(r["splits"]["base"]["mce"])
    geo = next(t for t in tables if t.kind == "geometry")
    assert [c.name for c in geo.columns] == ["LCD", "MID", "Eff. rank", "Cluster ETF gap"]
    assert [c.mean for c in geo.rows[0].cells] == pytest.approx([0.2, 0.7, 5.0, 0.1])
    assert not any(t.kind == "geometry" for t in summary_tables(load_results(tmp_path)))


def test_unknown_split_of_an_old_record_is_a_target(tmp_path: Path):
    r = make_result("coop", 1.0, 1, protocol="cross_dataset")
    r["splits"] = {"source": r["splits"]["base"], "dtd": r["splits"]["new"]}
    assert experiment_layout([r]).targets == ("dtd",)
    assert len(BASE) and len(NEW)


def test_a_run_that_trained_nothing_stands_for_every_tau_and_seed(runs_dir: Path):
    zs = make_result("zeroshot", 1.0, 1, learner="zeroshot", sampling_independent=True)
    zs["run_id"] = "zeroshot-once"
    write_run(runs_dir, zs, features=False)
    acc = next(t for t in summary_tables(load_results(runs_dir)) if t.kind == "accuracy")
    row = next(r for r in acc.rows if r.method == "zeroshot")
    base_cols = [j for j, c in enumerate(acc.columns) if c.name == "Base"]
    assert len(base_cols) == 2  # tau 1 and tau 0.06
    for j in base_cols:  # every tau column, over the experiment's 3 seeds, all the one run's number
        assert row.cells[j].n == 3 and row.cells[j].std == 0.0
        assert row.cells[j].mean == pytest.approx(zs["splits"]["base"]["accuracy"])
    text = render_table(acc, "md")
    assert "(n=1)" not in text


def test_paper_layouts_read_roles_too(tmp_path: Path):
    from tailprompt.report.layouts import cpt_tables, tcpt_tables

    records = []
    for method in ("maple", "tcpt_maple"):
        for seed in (1, 2):
            r = _seen_unseen(method, seed)
            r["run_id"] = f"{method}-{seed}"
            records.append(r)
    (table,) = cpt_tables(records)
    maple = table.rows[0][1][table.columns.index("MaPLe")]
    assert maple.values == pytest.approx([base_new_hm(r) for r in records if r["method"] == "maple"])  # seeds 1, 2
    assert "open world" in table.title
    ece = next(t for t in tcpt_tables(records) if t.key.endswith("__ece"))
    row = next(cells for label, cells in ece.rows if label == "MaPLe")
    assert row[0].mean == pytest.approx(sum(r["splits"]["seen"]["ece"] for r in records[:2]) / 2)
