"""DPC end to end: stage 2 starts from a finished run, keeps its prompts for new classes, refuses strangers."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tailprompt.cli import UserError
from tailprompt.commands.eval import evaluate_run
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, execute_run
from tailprompt.schema import ConfigError
from tailprompt.testing.trees import make_dataset_tree

SHORT = ["optim.epochs=1", "optim.max_steps=2", "optim.batch_size=4", "eval.fit_temperature=false",
         "eval.dac=false", "eval.geometry=false"]


@pytest.fixture(scope="module")
def backbones():
    return BackboneCache()


@pytest.fixture
def overrides(base_overrides):
    return base_overrides + SHORT


def tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_stage2_trains_from_the_stage1_run_and_keeps_its_prompts_for_new_classes(overrides, backbones):
    stage1 = execute_run(resolve_config("coop", overrides), backbones)
    stage2 = execute_run(resolve_config("dpc_coop", overrides + [f"init.from_run={stage1.run_dir}"]), backbones)
    r1, r2 = stage1.result, stage2.result
    assert r2["learner"] == "dpc" and r2["loss_curve"]["dpc/contrastive"][0] > 0
    saved1, saved2 = tensors(stage1.run_dir / "prompts.safetensors"), tensors(stage2.run_dir / "prompts.safetensors")
    assert set(saved2) == {"ctx"}  # the stored mix M; the stage-1 prompts stay in the stage-1 run
    assert not saved2["ctx"].equal(saved1["ctx"])  # stage 2 trained M (it started at M = P)
    # w_n = 0: on new classes the stage-2 model is the stage-1 model.
    assert r2["splits"]["new"]["per_class_accuracy"] == r1["splits"]["new"]["per_class_accuracy"]
    assert r2["splits"]["new"]["ece"] == pytest.approx(r1["splits"]["new"]["ece"], abs=1e-9)
    # The eval command reloads the stage-1 run named by init.from_run and mixes for new classes too.
    root = resolve_config("coop", overrides).data.root
    new1 = evaluate_run(stage1.run_dir, "eurosat", root, "new")
    new2 = evaluate_run(stage2.run_dir, "eurosat", root, "new")
    assert new2["per_class_accuracy"] == new1["per_class_accuracy"]
    base2 = evaluate_run(stage2.run_dir, "eurosat", root, "base")
    assert base2["accuracy"] == pytest.approx(r2["splits"]["base"]["accuracy"])


def test_eval_of_released_dpc_prompts_needs_the_first_stage_and_scores_as_the_run(overrides, backbones, capsys):
    from tailprompt.cli import main

    weighted = overrides + ["learner.weight_for_new=0.3"]  # new classes mix both stages' prompts
    stage1 = execute_run(resolve_config("coop", overrides), backbones)
    stage2 = execute_run(resolve_config("dpc_coop", weighted + [f"init.from_run={stage1.run_dir}"]), backbones)
    root = resolve_config("coop", overrides).data.root
    sets = [a for o in weighted if o.split("=")[0].startswith(("backbone.", "data.cache", "learner."))
            for a in ("--set", o)]
    argv = ["eval", "--prompts", str(stage2.run_dir / "prompts.safetensors"), "--learner", "dpc", "--config",
            "dpc_coop", "--dataset", "eurosat", "--root", str(root), *sets]
    assert main([*argv, "--classes", "new"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stage1 FILE" in err[0]
    for classes in ("base", "new"):
        assert main([*argv, "--classes", classes, "--stage1", str(stage1.run_dir / "prompts.safetensors")]) == 0
        released = json.loads(capsys.readouterr().out)
        of_run = evaluate_run(stage2.run_dir, "eurosat", root, classes)
        assert released["accuracy"] == of_run["accuracy"]
        assert released["nll"] == pytest.approx(of_run["nll"], abs=1e-6)
        assert of_run["accuracy"] == pytest.approx(stage2.result["splits"][classes]["accuracy"])


def test_stage2_refuses_a_run_of_another_learner_dataset_or_backbone(overrides, backbones, eurosat_root, tmp_path):
    maple = execute_run(resolve_config("maple", overrides), backbones)
    with pytest.raises(ConfigError, match=r"learner 'maple' \(this run starts from a 'coop' run\)") as e:
        execute_run(resolve_config("dpc_coop", overrides + [f"init.from_run={maple.run_dir}"]), backbones)
    assert "\n" not in str(e.value)
    other = [o for o in overrides if not o.startswith("backbone.name")] + ["backbone.name=embedded"]
    embedded = execute_run(resolve_config("coop", other), backbones)
    with pytest.raises(ConfigError, match="backbone embedded"):
        execute_run(resolve_config("dpc_coop", overrides + [f"init.from_run={embedded.run_dir}"]), backbones)
    make_dataset_tree("dtd", eurosat_root, images_per_class=5, num_classes=6)
    dtd = execute_run(resolve_config("coop", overrides + ["data.name=dtd"]), backbones)
    with pytest.raises(ConfigError, match=r"dataset 'dtd' \(this run: 'eurosat'\)"):
        execute_run(resolve_config("dpc_coop", overrides + [f"init.from_run={dtd.run_dir}"]), backbones)
    with pytest.raises(ConfigError, match="not a finished run folder"):
        execute_run(resolve_config("dpc_coop", overrides + [f"init.from_run={tmp_path}"]), backbones)


def test_stage2_without_a_stage1_run_says_what_to_set(overrides, backbones):
    with pytest.raises(UserError, match=r"set init.from_run=runs/<id> \(a run of learner 'coop'"):
        execute_run(resolve_config("dpc_coop", overrides + ["init.from_preset=null"]), backbones)


def test_the_preset_makes_its_first_stage_when_missing(overrides, backbones):
    stage2 = execute_run(resolve_config("dpc_coop", overrides), backbones)  # no init.from_run given
    # The first stage keeps the coop preset's schedule (200 epochs, batch 32) and this run's step cap.
    same = [o for o in overrides if not o.startswith("optim.")] + ["optim.max_steps=2"]
    stage1 = execute_run(resolve_config("coop", same), backbones)
    assert stage1.skipped  # made by the stage-2 run: the coop preset's run with these settings
    assert stage1.result["config"]["optim"]["epochs"] == 200
    assert stage2.result["config"]["init"] == {"from_run": str(stage1.run_dir), "from_preset": "coop"}
    assert stage2.result["splits"]["new"]["per_class_accuracy"] == stage1.result["splits"]["new"]["per_class_accuracy"]
    again = execute_run(resolve_config("dpc_coop", overrides), backbones)
    assert again.skipped and again.run_dir == stage2.run_dir  # the run id does not depend on the made folder
    with pytest.raises(ConfigError, match="own method"):
        execute_run(resolve_config("dpc_coop", overrides + ["init.from_preset=dpc_coop"]), backbones)


def test_stage2_on_maple_trains_and_keeps_every_stage1_tensor(overrides, backbones):
    stage1 = execute_run(resolve_config("maple", overrides), backbones)
    stage2 = execute_run(resolve_config("dpc_maple", overrides + [f"init.from_run={stage1.run_dir}"]), backbones)
    saved1, saved2 = tensors(stage1.run_dir / "prompts.safetensors"), tensors(stage2.run_dir / "prompts.safetensors")
    assert set(saved2) == set(saved1)  # MaPLe's reference names, each the stored mix of that tensor
    assert stage2.result["splits"]["new"]["per_class_accuracy"] == stage1.result["splits"]["new"]["per_class_accuracy"]
    assert json.loads(json.dumps(stage2.result["config"]))["init"]["from_run"] == str(stage1.run_dir)


class Killed(Exception):
    pass


def test_killed_stage2_resumes_with_identical_results(base_overrides, backbones, tmp_path, monkeypatch):
    import tailprompt.engine.train as train_mod

    stage1 = execute_run(resolve_config("coop", base_overrides + SHORT), backbones)
    overrides = base_overrides + ["optim.epochs=3", "optim.batch_size=8", "optim.checkpoint_every_s=0",
                                  "eval.fit_temperature=false", f"init.from_run={stage1.run_dir}"]
    reference = execute_run(resolve_config("dpc_coop", overrides + [f"output_dir={tmp_path / 'ref'}"]), backbones)
    real_save = train_mod.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Killed  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    cfg = resolve_config("dpc_coop", overrides + [f"output_dir={tmp_path / 'killed'}"])
    with pytest.raises(Killed):
        execute_run(cfg, backbones)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = execute_run(cfg, backbones)
    assert resumed.result["loss_curve"] == reference.result["loss_curve"]
    a, b = tensors(reference.run_dir / "prompts.safetensors"), tensors(resumed.run_dir / "prompts.safetensors")
    assert set(a) == set(b) and all(a[k].equal(b[k]) for k in a)


@pytest.mark.parametrize("mode", [[], ["data.cache=false"]], ids=["cached", "exact"])
def test_hard_negative_images_can_come_from_the_whole_training_split(mode, overrides, backbones, monkeypatch):
    import tailprompt.objectives.dpc as dpc_objective
    from tailprompt.engine.run import prepare_run

    stage1 = execute_run(resolve_config("coop", overrides), backbones)
    cfg = resolve_config("dpc_coop", overrides + mode + [f"init.from_run={stage1.run_dir}",
                                                  "objectives=[{name: dpc, image_pool: train_split}]"])
    setup = prepare_run(cfg, backbones.get(cfg.backbone))
    own = {it.key for it in setup.training.items}
    extra = {it.key for it in setup.extra_items}
    assert extra and not extra & own and extra | own == {it.key for it in setup.plan.train.train}
    pool = setup.training.items + setup.extra_items
    draws = []
    real = dpc_objective.hard_negative_batch

    def recorded(*args):
        draws.append(real(*args))
        return draws[-1]

    monkeypatch.setattr(dpc_objective, "hard_negative_batch", recorded)
    execute_run(cfg, backbones)
    assert draws
    for negatives, picked in draws:
        assert [pool[i].label for i in picked] == [c for negs in negatives for c in negs]
    assert any(i >= len(setup.training.items) for _, picked in draws for i in picked)
