"""`tailprompt demo --quick` runs the main job end to end on the embedded default and writes the report."""

import json

from tailprompt.cli import main
from tailprompt.commands.demo import sweep_file
from tailprompt.engine.sweep import read_sweep


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    spec = read_sweep(sweep_file(quick=True))
    runs = [d for d in (out / "runs").iterdir() if (d / "result.json").is_file()]
    assert len(runs) == len(spec.methods) * len(spec.grid["data.tau"]) * len(spec.grid["seed"])
    results = [json.loads((d / "result.json").read_text()) for d in runs]
    assert {r["method"] for r in results} == set(spec.methods)
    assert all(r["backbone"]["name"] == "embedded" and r["dataset"] == "world" for r in results)
    # the world's own augmentation default was used and recorded (not CoOp's 0.08 crop)
    assert all(r["augment"] == {"crop_scale": [0.6, 1.0], "flip": True} for r in results)
    report = out / "report"
    assert (report / "tables.md").is_file() and (report / "summary.json").is_file()
    pngs = list(report.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    for method in spec.methods:
        assert method in printed  # the table reaches the terminal
    assert "The seeds' claims" in printed and (report / "claims.md").is_file()
    # Zero-shot on the embedded weights must beat chance (1/18 per split) by a wide margin.
    zs = next(r for r in results if r["method"] == "zeroshot" and r["tau"] == 1.0)
    assert zs["splits"]["base"]["accuracy"] > 3 * 100 / len(zs["splits"]["base"]["classnames"])


def test_full_demo_sweep_is_the_documented_grid():
    spec = read_sweep(sweep_file(quick=False))
    assert spec.methods == ["zeroshot", "coop", "kgcoop", "global_etf_coop", "npt_coop", "cpt_coop",
                            "tcpt_coop", "cpt_tcpt_coop"]
    assert spec.grid == {"data.tau": [1.0, 0.25, 0.06], "seed": [1, 2, 3]}
    assert spec.fixed["backbone.name"] == "embedded" and spec.fixed["protocol.name"] == "base_to_new"
