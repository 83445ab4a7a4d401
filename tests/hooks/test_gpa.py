"""Gaussian prompt aggregation: the reference's epoch weights, and the hook on a toy learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tailprompt.hooks.gpa import GaussianPromptAggregation, GPAConfig, gaussian_epoch_weights


def reference_weights(n_epochs, mean, std):
    """`PromptSRC.build_model`: the Gaussian pdf at epochs 1..N, divided by its (Python) sum."""
    gauss = lambda x: (1 / (std * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((x - mean) / std) ** 2)  # noqa: E731
    g = np.array([gauss(a) for a in range(1, n_epochs + 1)])
    return g / sum(g)


class ToyLearner(nn.Module):
    """Not a prompt learner at all: two parameters and the state methods the hook uses."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3))
        self.b = nn.Parameter(torch.zeros(2, 2))

    def prompt_state(self):
        return {k: v.detach().clone() for k, v in self.named_parameters()}

    def load_prompt_state(self, state):
        with torch.no_grad():
            for k, p in self.named_parameters():
                p.copy_(state[k])


@pytest.mark.parametrize(("n", "mean", "std"), [(20, 15, 1), (20, 6, 10), (50, 30, 30), (50, 45, 5), (5, 15, 1)])
def test_weights_equal_the_reference_formula(n, mean, std):
    got = gaussian_epoch_weights(n, mean, std)
    np.testing.assert_allclose(got, reference_weights(n, mean, std), rtol=1e-12, atol=0)
    assert sum(got) == pytest.approx(1.0, abs=1e-12)


def test_weights_stay_finite_where_the_reference_pdf_underflows():
    with np.errstate(invalid="ignore"):
        assert np.isnan(reference_weights(2, 45, 1)).all()  # 0 / 0 upstream
    assert gaussian_epoch_weights(2, 45, 1) == pytest.approx([0.0, 1.0])


def run_epochs(hook, learner, values, start=0):
    for epoch in range(start, len(values)):
        with torch.no_grad():
            learner.a.fill_(values[epoch])
            learner.b.fill_(-2 * values[epoch])
        hook.on_epoch_end(learner, epoch)


def test_aggregate_replaces_the_prompts_at_the_end():
    values = [1.0, 2.0, 4.0, 8.0]
    hook, learner = GaussianPromptAggregation(GPAConfig(mean=3, std=1)), ToyLearner()
    hook.on_train_start(learner, len(values))
    run_epochs(hook, learner, values)
    assert torch.all(learner.a == 8.0)  # nothing changes before the end
    hook.on_train_end(learner)
    w = reference_weights(4, 3, 1)
    expected = float(sum(wi * v for wi, v in zip(w, values)))
    torch.testing.assert_close(learner.a.detach(), torch.full((3,), expected), rtol=1e-6, atol=0)
    torch.testing.assert_close(learner.b.detach(), torch.full((2, 2), -2 * expected), rtol=1e-6, atol=0)


def test_a_run_cut_short_averages_the_epochs_it_saw():
    values = [1.0, 3.0, 100.0, 100.0]
    hook, learner = GaussianPromptAggregation(GPAConfig(mean=2, std=1)), ToyLearner()
    hook.on_train_start(learner, len(values))
    run_epochs(hook, learner, values[:2])  # optim.max_steps stopped it in epoch 2
    hook.on_train_end(learner)
    w = reference_weights(4, 2, 1)
    expected = float((w[0] * 1.0 + w[1] * 3.0) / (w[0] + w[1]))
    torch.testing.assert_close(learner.a.detach(), torch.full((3,), expected), rtol=1e-6, atol=0)

    far, learner = GaussianPromptAggregation(GPAConfig(mean=15, std=1)), ToyLearner()
    far.on_train_start(learner, 20)
    run_epochs(far, learner, [1.0, 2.0])  # weight ~1e-43 on what it saw: the trained prompts stay
    with pytest.warns(UserWarning, match="stopped after 2 of 20 epochs"):
        far.on_train_end(learner)
    assert torch.all(learner.a == 2.0)


def test_resumed_aggregation_equals_an_uninterrupted_one():
    values = [0.5, -1.0, 3.0, 2.0, 7.0]
    cfg = GPAConfig(mean=3, std=2)
    straight, learner = GaussianPromptAggregation(cfg), ToyLearner()
    straight.on_train_start(learner, len(values))
    run_epochs(straight, learner, values)
    straight.on_train_end(learner)

    first, resumed_learner = GaussianPromptAggregation(cfg), ToyLearner()
    first.on_train_start(resumed_learner, len(values))
    run_epochs(first, resumed_learner, values[:2])
    saved = first.state_dict()
    second = GaussianPromptAggregation(cfg)  # a fresh process after a kill
    second.load_state_dict({k: v.clone() for k, v in saved.items()})
    second.on_train_start(resumed_learner, len(values))
    run_epochs(second, resumed_learner, values, start=2)
    second.on_train_end(resumed_learner)
    assert second.epochs_seen == 5
    assert torch.equal(resumed_learner.a, learner.a) and torch.equal(resumed_learner.b, learner.b)


def test_no_epoch_means_no_change_and_bad_settings_are_refused():
    hook, learner = GaussianPromptAggregation(GPAConfig()), ToyLearner()
    hook.on_train_start(learner, 3)
    hook.on_train_end(learner)
    assert torch.all(learner.a == 0)
    with pytest.raises(ValueError, match="std"):
        GPAConfig(std=0)


def test_the_engine_runs_the_hook_from_the_run_config(eurosat_root, tmp_path):
    """A GPA whose whole weight sits on epoch 1 ends a 3-epoch run with the prompts of its first epoch."""
    from safetensors.torch import load_file

    from tailprompt.engine.resolve import resolve_config
    from tailprompt.engine.run import BackboneCache, execute_run

    base = [
        "backbone.name=tiny-vit", "data.name=eurosat", f"data.root={eurosat_root}", "data.tau=0.06",
        "optim.epochs=3", "optim.batch_size=32", "eval.fit_temperature=false",  # one step per epoch
        f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
    ]
    backbones = BackboneCache()
    averaged = execute_run(resolve_config("coop", base + ["hooks=[{name: gpa, mean: 1, std: 0.001}]"]), backbones)
    first_epoch = execute_run(resolve_config("coop", base + ["optim.max_steps=1"]), backbones)
    plain = execute_run(resolve_config("coop", base), backbones)
    got, expected = (load_file(str(r.run_dir / "prompts.safetensors")) for r in (averaged, first_epoch))
    assert torch.equal(got["ctx"], expected["ctx"])
    assert not torch.equal(got["ctx"], load_file(str(plain.run_dir / "prompts.safetensors"))["ctx"])


def test_listed_by_the_cli(capsys):
    from tailprompt.cli import main

    assert main(["list", "hooks"]) == 0
    listed = capsys.readouterr().out.split("hooks:", 1)[1].split(",")
    assert "gpa" in {n.strip() for n in listed}


def test_a_killed_promptsrc_run_resumes_its_aggregate(eurosat_root, tmp_path, monkeypatch):
    """Killed after epoch 2's checkpoint, the resumed run ends with the prompts of an uninterrupted one."""
    from safetensors.torch import load_file

    import tailprompt.engine.train as train_mod
    from tailprompt.engine.resolve import resolve_config
    from tailprompt.engine.run import BackboneCache, execute_run

    overrides = [
        "backbone.name=tiny-vit", "data.name=eurosat", f"data.root={eurosat_root}", "data.tau=0.06",
        "optim.epochs=4", "optim.batch_size=8", "optim.checkpoint_every_s=0", "eval.fit_temperature=false",
        "learner.prompt_depth_text=3", "learner.prompt_depth_vision=3", "hooks=[{name: gpa, mean: 2, std: 1}]",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    backbones = BackboneCache()
    reference = execute_run(resolve_config("promptsrc", overrides + [f"output_dir={tmp_path / 'ref'}"]), backbones)
    cfg = resolve_config("promptsrc", overrides + [f"output_dir={tmp_path / 'killed'}"])
    real_save, saves = train_mod.save_checkpoint, []

    def save_then_die(path, learner, optimizer, gen, progress, hooks=()):
        real_save(path, learner, optimizer, gen, progress, hooks)
        saves.append(progress.epoch)
        if len(saves) == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        execute_run(cfg, backbones)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = execute_run(cfg, backbones)
    got, expected = (load_file(str(r.run_dir / "prompts.safetensors")) for r in (resumed, reference))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert resumed.result["loss_curve"] == reference.result["loss_curve"]


@pytest.mark.parametrize(
    ("dataset", "mean", "std"),
    [("eurosat", 45, 5), ("stanford_cars", 45, 5), ("dtd", 45, 5), ("caltech101", 30, 30), ("imagenet", 30, 30)],
)
def test_fewshot_preset_takes_the_reference_gpa_of_each_dataset(dataset, mean, std):
    from tailprompt.engine.resolve import resolve_config

    cfg = resolve_config("promptsrc_fewshot", [f"data.name={dataset}"])
    assert [(h.name, h.options.mean, h.options.std) for h in cfg.hooks] == [("gpa", mean, std)]
    own = resolve_config("promptsrc_fewshot", [f"data.name={dataset}", "hooks=[{name: gpa, mean: 10, std: 2}]"])
    assert (own.hooks[0].options.mean, own.hooks[0].options.std) == (10, 2)  # the user's setting wins
