"""A run killed mid-training resumes at its last checkpoint and ends exactly as an uninterrupted run."""

import pytest

import tailprompt.engine.train as train_mod
from tailprompt.engine.resolve import resolve_config, run_id
from tailprompt.engine.run import CHECKPOINT, BackboneCache, execute_run


class Killed(Exception):
    pass


@pytest.mark.parametrize("extra", [[], ["data.cache=false"]], ids=["cached", "exact"])
def test_killed_run_resumes_mid_training_with_identical_results(extra, base_overrides, tmp_path, monkeypatch):
    overrides = base_overrides + extra + ["optim.epochs=4", "optim.batch_size=8", "optim.checkpoint_every_s=0"]
    backbones = BackboneCache()
    reference = execute_run(resolve_config("cpt_coop", overrides + [f"output_dir={tmp_path / 'ref'}"]), backbones)

    cfg = resolve_config("cpt_coop", overrides + [f"output_dir={tmp_path / 'killed'}"])
    real_save = train_mod.save_checkpoint
    saves = []

    def save_then_die(path, learner, optimizer, gen, progress, hooks=()):
        real_save(path, learner, optimizer, gen, progress, hooks)
        saves.append(progress.epoch)
        if len(saves) == 2:
            raise Killed  # killed right after epoch 2's checkpoint

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        execute_run(cfg, backbones)
    run_dir = tmp_path / "killed" / run_id(cfg, backbones.get(cfg.backbone).identity)
    assert (run_dir / CHECKPOINT).is_file() and not (run_dir / "result.json").exists()

    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    epochs_run = []
    real_lr = train_mod.lr_at_epoch
    monkeypatch.setattr(train_mod, "lr_at_epoch", lambda e, c: epochs_run.append(e) or real_lr(e, c))
    resumed = execute_run(cfg, backbones)
    assert epochs_run == [2, 3]  # only the epochs after the checkpoint ran again
    assert resumed.result["loss_curve"] == reference.result["loss_curve"]
    for split in ("base", "new"):
        assert resumed.result["splits"][split]["per_class_accuracy"] == reference.result["splits"][split][
            "per_class_accuracy"
        ]
    assert not (run_dir / CHECKPOINT).exists()  # removed once the run is complete


def test_settings_that_do_not_change_results_keep_the_run_id():
    a = resolve_config("coop")
    b = resolve_config("coop", ["data.num_workers=4", "optim.checkpoint_every_s=5", "data.cache_dir=/x"])
    assert run_id(a, "bb") == run_id(b, "bb")
    assert run_id(a, "bb") != run_id(resolve_config("coop", ["data.n_views=2"]), "bb")
