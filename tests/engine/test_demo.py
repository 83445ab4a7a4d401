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
    trained = len(spec.methods) - 1  # zero-shot trains nothing: one run serves every tau x seed
    assert len(runs) == trained * len(spec.grid["data.tau"]) * len(spec.grid["seed"]) + 1
    results = [json.loads((d / "result.json").read_text()) for d in runs]
    assert {r["method"] for r in results} == set(spec.methods)
    assert all(r["backbone"]["name"] == "embedded" and r["dataset"] == "world" for r in results)
    # the world's own augmentation default was used and recorded (not CoOp's 0.08 crop)
    assert all(r["augment"]["crop_scale"] == [0.6, 1.0] and r["augment"]["flip"] for r in results)
    report = out / "report"
    assert (report / "tables.md").is_file() and (report / "summary.json").is_file()
    pngs = list(report.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    for method in spec.methods:
        assert method in printed  # the table reaches the terminal
    assert "The seeds' claims" in printed and (report / "claims.md").is_file()
    # Zero-shot on the embedded weights must beat chance (1/18 per split) by a wide margin.
    zs = next(r for r in results if r["method"] == "zeroshot")
    assert zs["sampling_independent"] is True
    for tau in spec.grid["data.tau"]:  # ... and the table shows it in every tau column
        assert f"τ={tau:g} Base" in printed
    assert zs["splits"]["base"]["accuracy"] > 3 * 100 / len(zs["splits"]["base"]["classnames"])


def test_full_demo_sweep_is_the_documented_grid():
    spec = read_sweep(sweep_file(quick=False))
    assert spec.methods == ["zeroshot", "coop", "kgcoop", "global_etf_coop", "npt_coop", "cpt_coop",
                            "tcpt_coop", "cpt_tcpt_coop"]
    assert spec.grid == {"data.tau": [1.0, 0.25, 0.06], "seed": [1, 2]}
    assert spec.fixed["backbone.name"] == "embedded" and spec.fixed["protocol.name"] == "base_to_new"


def test_demo_help_and_readme_agree_on_quick():
    from pathlib import Path

    from tailprompt.cli import build_parser

    parser = build_parser("demo")
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    quick = next(a for a in sub.choices["demo"]._actions if "--quick" in a.option_strings)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    claim = "smoke version, under a minute: 4 methods, 2 imbalance ratios, 1 seed, 2 epochs"
    assert claim in quick.help and claim in readme


def test_demo_seeds_replace_only_the_seed_list():
    from tailprompt.commands.demo import demo_spec

    base, five = demo_spec(quick=False), demo_spec(quick=False, seeds=5)
    assert five.grid == {**base.grid, "seed": [1, 2, 3, 4, 5]}
    assert (five.methods, five.fixed) == (base.methods, base.fixed)


def test_demo_seeds_must_be_a_positive_count(capsys):
    import pytest

    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--seeds", bad])
        assert exc.value.code == 2
        assert f"expected a whole number >= 1, got {bad!r}" in capsys.readouterr().err


def test_deep_rows_are_the_maple_family_on_the_embedded_vit_with_the_demo_grid():
    from tailprompt.commands.demo import demo_spec, demo_specs

    demo, deep = demo_specs(quick=False, seeds=5, deep=True)
    assert demo == demo_spec(quick=False, seeds=5)
    assert deep.fixed["backbone.name"] == "embedded-vit" and deep.fixed["data.name"] == demo.fixed["data.name"]
    assert deep.grid == demo.grid and "optim.epochs" not in deep.fixed  # each preset keeps its schedule
    assert deep.methods[0] == "zeroshot" and all(m.endswith("maple") for m in deep.methods[1:])
    assert demo_specs(quick=False, seeds=None, deep=False) == [demo_spec(quick=False)]


def test_deep_has_no_quick_version(capsys):
    assert main(["demo", "--quick", "--deep", "--out", "unused"]) == 2
    assert "--deep has no quick version" in capsys.readouterr().err
