"""End-to-end runs through `tailprompt.cli.main` on tiny-vit and a generated mini EuroSAT tree."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tailprompt.cli import main
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, execute_run
from tailprompt.engine.sweep import SweepSpec, expand, run_all
from tailprompt.schema import ConfigError

RUN_FILES = {"config.yaml", "result.json", "prompts.safetensors", "features.safetensors"}


def _only_run(runs: Path) -> Path:
    dirs = [d for d in runs.iterdir() if d.is_dir()]
    assert len(dirs) == 1
    return dirs[0]


@pytest.mark.parametrize("preset", ["coop", "cocoop", "kgcoop", "maple"])
def test_train_writes_a_complete_run(preset, base_overrides, tmp_path, capsys):
    extra = ["optim.batch_size=4", "optim.max_steps=3"] if preset in ("cocoop", "maple") else []
    argv = ["train", "--config", preset] + [a for o in base_overrides + extra for a in ("--set", o)]
    assert main(argv) == 0
    run = _only_run(tmp_path / "runs")
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    r = json.loads((run / "result.json").read_text())
    assert r["method"] == preset and r["protocol"] == "base_to_new"
    assert r["backbone"]["precision"] == "fp32"  # auto on a CPU without native bf16 (tests/conftest.py)
    # tau = 0.06 over the 5 base classes: the formula's counts, in label order.
    assert list(r["sampling"]["counts"].values()) == [16, 7, 3, 1, 1]
    assert set(r["splits"]) == {"base", "new"}
    assert len(r["splits"]["base"]["classnames"]) == 5 and len(r["splits"]["new"]["classnames"]) == 5
    b, n = r["splits"]["base"]["accuracy"], r["splits"]["new"]["accuracy"]
    assert r["hm"] == pytest.approx(0 if b + n == 0 else 2 * b * n / (b + n))
    assert set(r["groups"]) >= {"head", "medium", "tail", "classes"}
    assert r["groups"]["classes"]["head"][0] == "Annual Crop Land"  # most shots first
    assert r["loss_curve"]["total"] and all(map(lambda v: v == v, r["loss_curve"]["total"]))  # finite, not NaN
    assert set(r["geometry"]) == {"learned", "frozen", "image"}
    prompts = load_file(str(run / "prompts.safetensors"))
    assert prompts and all(t.dtype == torch.float32 for t in prompts.values())
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(run)


def test_same_config_and_seed_give_identical_metrics(base_overrides, tmp_path):
    cfg = resolve_config("cpt_tcpt_coop", base_overrides)
    backbones = BackboneCache()
    first = execute_run(cfg, backbones).result
    second = execute_run(cfg, backbones, force=True).result
    for split in ("base", "new"):
        assert first["splits"][split]["per_class_accuracy"] == second["splits"][split]["per_class_accuracy"]
        assert first["splits"][split]["ece"] == second["splits"][split]["ece"]
    assert first["loss_curve"] == second["loss_curve"]
    other_seed = execute_run(resolve_config("cpt_tcpt_coop", base_overrides + ["seed=2"]), backbones).result
    assert other_seed["sampling"]["ids"] != first["sampling"]["ids"]


def test_training_changes_prompts_and_only_prompts(base_overrides, tmp_path):
    cfg = resolve_config("coop", base_overrides + ["optim.epochs=3"])
    backbones = BackboneCache()
    backbone = backbones.get(cfg.backbone)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    run = execute_run(cfg, backbones)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ctx = load_file(str(run.run_dir / "prompts.safetensors"))["ctx"]
    init = backbone.embed_tokens(backbone.tokenize(["a photo of a"]))[0, 1:5].float()
    assert not torch.allclose(ctx, init)  # the context moved away from "a photo of a"


def test_cpt_run_records_clusters_terms_ece_geometry(base_overrides, tmp_path):
    r = execute_run(resolve_config("cpt_coop", base_overrides)).result
    assert r["clusters"]["n_clusters"] >= 1 and set(r["clusters"]["assignment"]) == set(r["sampling"]["counts"])
    assert {"cpt/tetf", "cpt/cc", "cpt/rs", "cross_entropy/ce"} <= set(r["loss_curve"])
    assert 0 <= r["splits"]["base"]["ece"] <= 100
    assert r["splits"]["new"]["ece_dac"] is not None
    for side in ("learned", "frozen"):
        assert "global_etf_gap" in r["geometry"][side]


def test_eval_reuses_saved_prompts(base_overrides, tmp_path, capsys):
    out = execute_run(resolve_config("coop", base_overrides))
    root = next(o.split("=", 1)[1] for o in base_overrides if o.startswith("data.root="))
    assert main(["eval", "--run", str(out.run_dir), "--dataset", "eurosat", "--root", root, "--classes", "new"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == pytest.approx(out.result["splits"]["new"]["accuracy"])
    assert (out.run_dir / "eval_eurosat_new.json").is_file()


def test_user_mistakes_exit_2_with_one_line(base_overrides, capsys):
    assert main(["train", "--config", "coop", "--set", "data.tauu=1"]) == 2
    err = capsys.readouterr().err
    assert "tauu" in err and "Traceback" not in err
    assert main(["train", "--config", "coop", "--set", "data.name=nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", "--config", "coop", "--set", "backbone.precision=fp16"]) == 2
    err = capsys.readouterr().err
    assert "backbone.precision" in err and "fp16" in err and "Traceback" not in err


def test_bf16_run_records_its_precision_and_caches_its_features_apart(base_overrides, tmp_path):
    fp32 = execute_run(resolve_config("coop", base_overrides + ["optim.max_steps=2"]))
    bf16 = execute_run(resolve_config("coop", base_overrides + ["optim.max_steps=2", "backbone.precision=bf16"]))
    assert (fp32.result["backbone"]["precision"], bf16.result["backbone"]["precision"]) == ("fp32", "bf16")
    keys = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "features").glob("*/key.json")]
    assert sorted(k["precision"] for k in keys) == ["bf16", "fp32"]
    # close to the fp32 run, not the same numbers
    assert bf16.result["loss_curve"]["total"] != fp32.result["loss_curve"]["total"]
    assert bf16.result["loss_curve"]["total"][0] == pytest.approx(fp32.result["loss_curve"]["total"][0], rel=0.05)


def test_killed_sweep_resumes_to_exactly_the_grid(base_overrides, tmp_path, monkeypatch):
    spec = SweepSpec(methods=["coop", "tcpt_coop"], grid={"seed": [1, 2]},
                     fixed={o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1])
                            for o in base_overrides if "seed" not in o})
    configs = expand(spec)
    assert len(configs) == 4

    class Killed(Exception):
        pass

    def kill_after_two(cfg, outcome):
        if sum(1 for d in (tmp_path / "runs").iterdir() if (d / "result.json").is_file()) == 2:
            raise Killed

    with pytest.raises(Killed):
        run_all(configs, progress=False, on_result=kill_after_two)
    # A third run died half-way: its folder exists without result.json.
    import tailprompt.engine.run as run_mod

    real_write = run_mod.write_json_atomic

    def crash(path, obj):
        raise Killed

    monkeypatch.setattr(run_mod, "write_json_atomic", crash)
    with pytest.raises(Killed):
        execute_run(configs[2])
    monkeypatch.setattr(run_mod, "write_json_atomic", real_write)
    dirs = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    assert len(dirs) == 3 and sum((d / "result.json").is_file() for d in dirs) == 2

    reports = run_all(configs, progress=False)
    assert [r.status for r in reports] == ["done", "done", "ran", "ran"]
    complete = [d for d in (tmp_path / "runs").iterdir() if (d / "result.json").is_file()]
    assert len(complete) == 4


def test_sweep_command_dry_run_and_run(base_overrides, tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    fixed = "\n".join(f"  {o.split('=', 1)[0]}: {o.split('=', 1)[1]}" for o in base_overrides)
    sweep.write_text(f"methods: [zeroshot, coop]\ngrid:\n  data.tau: [1.0, 0.06]\nset:\n{fixed}\n")
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("todo") == 4
    assert main(["sweep", str(sweep)]) == 0
    # zero-shot trains nothing: its tau=1 and tau=0.06 configs are one run folder, launched once
    assert "4 runs: 3 run now, 1 already complete" in capsys.readouterr().out
    assert main(["sweep", str(sweep)]) == 0
    assert "4 runs: 0 run now, 4 already complete" in capsys.readouterr().out


def test_exact_mode_is_deterministic_and_independent_of_worker_processes(base_overrides):
    exact = base_overrides + ["data.cache=false", "optim.batch_size=8"]
    backbones = BackboneCache()
    serial = execute_run(resolve_config("coop", exact), backbones).result
    parallel = execute_run(resolve_config("coop", exact + ["data.num_workers=2"]), backbones).result
    assert serial["loss_curve"] == parallel["loss_curve"]
    assert serial["splits"]["new"]["per_class_accuracy"] == parallel["splits"]["new"]["per_class_accuracy"]
    cached = execute_run(resolve_config("coop", base_overrides + ["optim.batch_size=8"]), backbones).result
    assert cached["loss_curve"] != serial["loss_curve"]  # cached views are different draws than fresh ones


def test_threshold_groups_for_user_long_tail_data(base_overrides):
    r = execute_run(resolve_config("coop", base_overrides + ["eval.groups=thresholds"])).result
    # tau=0.06 counts [16, 7, 3, 1, 1]: all under 20 images, so every class is "few".
    assert r["groups"]["classes"]["few"] == list(r["sampling"]["counts"])
    assert r["groups"]["many"] is None and r["groups"]["medium"] is None and "head" not in r["groups"]
    with pytest.raises(ConfigError, match="eval.groups"):
        resolve_config("coop", base_overrides + ["eval.groups=quartiles"])


def test_a_training_class_without_test_images_is_left_out_of_its_group(tmp_path):
    from tailprompt.testing.trees import write_image

    for label, (name, n) in enumerate([("cat", 10), ("dog", 10), ("fox", 1)]):  # fox: one image, train only
        for i in range(n):
            write_image(tmp_path / "data" / "mine" / name / f"{name}_{i}.jpg", label, i)
    cfg = resolve_config("coop", [
        "backbone.name=tiny-vit", "data.name=imagefolder", f"data.root={tmp_path / 'data'}",
        "data.options.folder=mine", "protocol.name=all_classes", "optim.max_steps=2", "optim.epochs=1",
        f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "eval.fit_temperature=false",
    ])
    result = execute_run(cfg, BackboneCache()).result
    assert result["splits"]["all"]["per_class_accuracy"]["fox"] is None
    measured = [g for g, classes in result["groups"]["classes"].items() if classes != ["fox"]]
    assert all(result["groups"][g] is not None for g in measured)


def test_the_dac_temperature_recipe_runs_and_says_so(base_overrides):
    cfg = resolve_config("coop", base_overrides + ["optim.max_steps=2", "eval.temperature_fit=dac_sgd"])
    base = execute_run(cfg, BackboneCache()).result["splits"]["base"]
    assert base["temperature"] > 0 and base["temperature_source"].endswith("DAC's SGD recipe")
    assert base["ece_temperature_scaled"] is not None
