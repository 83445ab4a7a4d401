"""The paper layouts (CPT's main table, TCPT's per-learner table) on synthetic run records, the `--layout`
option of `tailprompt report`, and the two sweep files that produce those runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tailprompt.cli import main
from tailprompt.engine.sweep import expand, read_sweep
from tailprompt.report.layouts import (
    CPT_COLUMNS,
    TCPT_ROWS,
    cpt_tables,
    layout_tables,
    render_layout,
    tcpt_tables,
)
from tailprompt.report.results import ReportError

DATASETS = ["dtd", "eurosat"]
DATASET_INDEX = {"dtd": 0, "eurosat": 1, "imagenet": 2}
SEEDS = [1, 2]


def accuracy_pair(method: str, dataset: str, tau: float, seed: int) -> tuple[float, float]:
    """Distinct base / new accuracies per cell, so that HM-of-means and mean-of-HMs differ."""
    m = sum(map(ord, method)) % 17
    base = 60.0 + m + 5.0 * tau + 3.0 * DATASET_INDEX[dataset] + [0.0, 7.0][seed - 1]
    new = 55.0 - 0.5 * m + 2.0 * tau - 4.0 * DATASET_INDEX[dataset] + [6.0, -5.0][seed - 1]
    return base, new


def ece_pair(method: str, dataset: str, seed: int) -> tuple[float, float]:
    tcpt = method.startswith("tcpt_")
    return (2.0 if tcpt else 5.0) + seed + DATASET_INDEX[dataset], (3.0 if tcpt else 8.0) + 0.5 * seed


def record(method: str, dataset: str, tau: float, seed: int, protocol: str = "base_to_new") -> dict:
    base, new = accuracy_pair(method, dataset, tau, seed)
    ece_b, ece_n = ece_pair(method, dataset, seed)
    if protocol == "base_to_new":
        splits = {"base": {"accuracy": base, "ece": ece_b}, "new": {"accuracy": new, "ece": ece_n}}
    else:
        splits = {"source": {"accuracy": base, "ece": ece_b}, "caltech101": {"accuracy": new, "ece": ece_n},
                  "dtd": {"accuracy": new + 10.0, "ece": ece_n}}
    return {"run_id": f"{method}-{dataset}-{tau:g}-{seed}-{protocol}", "method": method, "seed": seed,
            "dataset": dataset, "protocol": protocol, "tau": tau, "shots": 16,
            "backbone": {"name": "ViT-B-16", "identity": "x"}, "splits": splits}


def hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def expected_hm_cell(method: str, tau: float, datasets=DATASETS) -> tuple[float, float]:
    """The papers' H: per dataset the HM of the seed-mean accuracies, then the mean over datasets; the
    spread is that of the per-seed dataset-average HMs."""
    per_dataset = [hm(*np.mean([accuracy_pair(method, d, tau, s) for s in SEEDS], axis=0)) for d in datasets]
    per_seed = [np.mean([hm(*accuracy_pair(method, d, tau, s)) for d in datasets]) for s in SEEDS]
    assert abs(np.mean(per_dataset) - np.mean(per_seed)) > 0.05  # the two conventions differ here
    return float(np.mean(per_dataset)), float(np.std(per_seed))


@pytest.fixture
def cpt_records() -> list[dict]:
    return [record(m, d, tau, s) for _, m in CPT_COLUMNS for d in DATASETS for tau in (1.0, 0.06) for s in SEEDS]


def test_cpt_table_rows_are_tau_columns_the_methods_cells_the_dataset_average_hm(cpt_records):
    (table,) = cpt_tables(cpt_records)
    assert table.columns == ["MaPLe", "CoPrompt", "NPT", "DeKg", "DPC", "CPT"]
    assert [label for label, _ in table.rows] == ["τ=1", "τ=0.06"]
    assert table.datasets == DATASETS and table.row_header == "Imbalance ratio"
    for (_, cells), tau in zip(table.rows, (1.0, 0.06)):
        for (_, method), cell in zip(CPT_COLUMNS, cells):
            mean, std = expected_hm_cell(method, tau)
            assert cell.mean == pytest.approx(mean) and cell.std == pytest.approx(std)
            assert cell.seeds == tuple(SEEDS)


def test_cpt_table_bolds_the_best_method_of_each_row_and_marks_partial_cells(cpt_records):
    # NPT lacks eurosat at tau 0.06: its cell averages dtd only, says so, and cannot be bold
    records = [r for r in cpt_records if not (r["method"] == "npt_maple" and r["dataset"] == "eurosat"
                                              and r["tau"] == 0.06)]
    records = [r for r in records if r["method"] != "coprompt"]  # a column without runs prints dashes
    (table,) = cpt_tables(records)
    text = render_layout([table], "md")
    row = next(line for line in text.splitlines() if line.startswith("| τ=0.06"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[1] == "–"
    assert "without eurosat" in cells[2] and "**" not in cells[2]
    means = {label: expected_hm_cell(m, 0.06)[0] for label, m in CPT_COLUMNS if m not in ("coprompt", "npt_maple")}
    best = max(means, key=means.get)
    for label, cell in zip(table.columns, cells):
        assert cell.startswith("**") == (label == best)
    assert text.splitlines()[4].startswith("| Imbalance ratio | MaPLe | CoPrompt |")


def test_cpt_layout_reads_a_substituted_preset_and_transfer_protocols(cpt_records):
    records = [r for r in cpt_records if r["method"] != "dpc_coop"]
    records += [record("dpc_maple", d, tau, s) for d in DATASETS for tau in (1.0, 0.06) for s in SEEDS]
    records += [record("cpt_maple", "imagenet", 1.0, s, protocol="cross_dataset") for s in SEEDS]
    tables = cpt_tables(records, {"dpc_coop": "dpc_maple"})
    b2n = next(t for t in tables if "base-to-new" in t.title)
    dpc = b2n.rows[0][1][b2n.columns.index("DPC")]
    assert dpc.mean == pytest.approx(expected_hm_cell("dpc_maple", 1.0)[0])
    xd = next(t for t in tables if "cross-dataset" in t.title)
    cell = xd.rows[0][1][xd.columns.index("CPT")]
    targets = [np.mean([accuracy_pair("cpt_maple", "imagenet", 1.0, s)[1] + k for k in (0.0, 10.0)])
               for s in SEEDS]
    assert cell.mean == pytest.approx(np.mean(targets))
    assert all(c.n == 0 for c in xd.rows[0][1][:-1])  # only CPT ran cross-dataset


def test_tcpt_table_pairs_each_learner_with_its_tcpt_preset():
    records = [record(m, d, 1.0, s) for _, alone, ours in TCPT_ROWS for m in (alone, ours)
               for d in DATASETS for s in SEEDS if m != "tcpt_promptsrc"]
    ece, acc = tcpt_tables(records)
    assert [label for label, _ in ece.rows] == ["CoOp", "CoCoOp", "MaPLe", "KgCoOp", "PromptSRC", "ProGrad"]
    assert ece.columns == ["Base ECE (orig)", "Base ECE (+TCPT)", "Novel ECE (orig)", "Novel ECE (+TCPT)"]
    assert acc.columns[0] == "Base Acc (orig)" and acc.higher_is_better and not ece.higher_is_better
    coop = dict(ece.rows)["CoOp"]
    expected_base = np.mean([np.mean([ece_pair("coop", d, s)[0] for d in DATASETS]) for s in SEEDS])
    expected_new_tcpt = np.mean([np.mean([ece_pair("tcpt_coop", d, s)[1] for d in DATASETS]) for s in SEEDS])
    assert coop[0].mean == pytest.approx(expected_base) and coop[3].mean == pytest.approx(expected_new_tcpt)
    text = render_layout([ece], "md")
    coop_line = next(line for line in text.splitlines() if line.startswith("| CoOp"))
    cells = [c.strip() for c in coop_line.strip("|").split("|")][1:]
    assert [c.startswith("**") for c in cells] == [False, True, False, True]  # lower ECE wins each pair
    promptsrc_line = next(line for line in text.splitlines() if line.startswith("| PromptSRC"))
    assert promptsrc_line.count("–") == 2  # its +TCPT runs are missing; the row stays, as in the paper


def test_layout_csv_and_latex_carry_every_cell(cpt_records):
    tables = layout_tables(cpt_records, "cpt_table")
    rows = render_layout(tables, "csv").splitlines()
    assert rows[0] == "table,row,column,mean,std,n_seeds,seeds,datasets"
    assert len(rows) == 1 + 2 * len(CPT_COLUMNS)
    latex = render_layout(tables, "latex")
    assert "\\begin{tabular}{lcccccc}" in latex and "$\\tau$=0.06" in latex
    with pytest.raises(ReportError, match="unknown layout"):
        layout_tables(cpt_records, "nope")


def write_runs(root: Path, records: list[dict]) -> Path:
    for r in records:
        folder = root / r["run_id"]
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(r))
    return root


def test_report_cli_prints_and_writes_the_layout(cpt_records, tmp_path, capsys):
    runs = write_runs(tmp_path / "runs", cpt_records)
    assert main(["report", str(runs), "--layout", "cpt_table"]) == 0
    printed = capsys.readouterr().out
    assert "| Imbalance ratio | MaPLe | CoPrompt | NPT | DeKg | DPC | CPT |" in printed
    assert (runs / "report" / "cpt_table.md").read_text(encoding="utf-8").strip() == printed.strip()
    assert main(["report", str(runs), "--layout", "cpt_table", "--format", "csv", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "cpt_table.csv").is_file()


def test_report_cli_layout_errors_are_one_line(cpt_records, tmp_path, capsys):
    runs = write_runs(tmp_path / "runs", [r for r in cpt_records if r["method"] == "dekg"])  # not in TCPT's table
    assert main(["report", str(runs), "--layout", "tcpt_table"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no run of the presets the tcpt_table layout reads" in err
    assert main(["report", str(runs), "--layout", "cpt_table", "--use", "dpc_coop"]) == 2
    assert "expected PRESET=OTHER" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--layout", "cpt_table", "--use", "foo=bar"], "cpt_table reads no preset 'foo'"),
    (["--layout", "cpt_table", "--use", "dpc_coop=dpc_maple", "--use", "dpc_coop=dpc_promptsrc"],
     "dpc_coop is already replaced by dpc_maple"),
    (["--use", "dpc_coop=dpc_maple"], "--use goes with --layout"),
    (["--layout", "cpt_table", "--html"], "--html and --methods go with the standard report"),
    (["--layout", "tcpt_table", "--methods", "coop"], "--html and --methods go with the standard report"),
])
def test_report_options_that_do_not_apply_are_refused(cpt_records, tmp_path, capsys, argv, message):
    runs = write_runs(tmp_path / "runs", cpt_records)
    assert main(["report", str(runs), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (runs / "report").exists()


def test_sweep_files_run_the_presets_their_layouts_read():
    cpt = read_sweep("cpt_table")  # packaged sweeps are found by name
    assert [m for m in cpt.methods if m != "coop"] == [m for _, m in CPT_COLUMNS]
    assert cpt.init_from == {"dpc_coop": "coop"}  # DPC's stage 2 starts from the matching coop run
    assert cpt.grid["data.tau"] == [1.0, 0.25, 0.06] and cpt.grid["seed"] == [1, 2, 3]
    assert len(cpt.grid["data.name"]) == 11 and cpt.fixed["protocol.name"] == "base_to_new"
    tcpt = read_sweep("tcpt_table")
    assert tcpt.methods == [m for _, alone, ours in TCPT_ROWS for m in (alone, ours)]
    assert tcpt.fixed["data.tau"] == 1.0 and len(tcpt.grid["data.name"]) == 11


@pytest.mark.parametrize("name", ["cpt_table", "tcpt_table"])
def test_every_run_of_the_sweep_files_resolves(name, tmp_path):
    spec = read_sweep(name)
    spec.grid = {key: values[:1] for key, values in spec.grid.items()}  # one run per method
    configs = expand(spec, ["backbone.name=tiny-vit", "backbone.weights=null", f"output_dir={tmp_path}"])
    assert [c.method for c in configs] == spec.methods
    dpc = [c for c in configs if c.method == "dpc_coop"]
    assert all(str(tmp_path) in str(c.init.from_run) for c in dpc) and len(dpc) == (name == "cpt_table")
