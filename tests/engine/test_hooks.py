"""The engine's general hooks, each driven by a toy objective or hook that is none of the methods using them:
gradient transforms, epoch-end hooks (with resume), runs that start from another run's prompts, and the
per-step choice among cached views, class descriptions and extra training images."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tailprompt.engine.loss import BoundObjective
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, cached_features, description_features, execute_run, prepare_run
from tailprompt.engine.train import TrainSetup, train_prompts
from tailprompt.hooks import TrainHook
from tailprompt.objectives import Objective, StepState
from tailprompt.schema import ConfigError


def cross_entropy(state: StepState) -> dict[str, torch.Tensor]:
    return {"ce": F.cross_entropy(state.logits, state.labels)}


def train_with(cfg, objectives: list[BoundObjective], hooks: list[TrainHook] = (), checkpoint=None, **extra):
    """Train `cfg`'s learner with toy objectives / hooks in place of the configured ones; the setup."""
    backbone = BackboneCache().get(cfg.backbone)
    torch.manual_seed(cfg.seed)
    setup = prepare_run(cfg, backbone)
    views = cached_features(cfg, setup)
    train_prompts(TrainSetup(
        learner=setup.learner, objectives=objectives, frozen_text=setup.frozen_text, clusters=None,
        dataset=setup.plan.train, items=setup.training.items, inputs=setup.inputs, train_views=views,
        optim=cfg.optim, seed=cfg.seed, hooks=list(hooks), checkpoint=checkpoint, **extra,
    ))
    return setup


@pytest.fixture
def cfg(base_overrides):
    return resolve_config("coop", base_overrides + ["data.tau=1.0", "optim.epochs=3", "optim.batch_size=8"])


def test_gradient_transform_rewrites_the_step(cfg):
    plain = train_with(cfg, [BoundObjective("toy", Objective(cross_entropy), {"ce": 1.0})])
    seen = []

    def identity(params, terms):
        seen.append(sorted(terms))

    same = train_with(cfg, [BoundObjective("toy", Objective(cross_entropy, identity), {"ce": 1.0})])
    assert seen and seen[0] == ["ce"]
    assert torch.equal(plain.learner.ctx, same.learner.ctx)

    def freeze(params, terms):
        for p in params:
            p.grad.zero_()

    cfg.optim.weight_decay = 0.0  # SGD's decay would move the prompts even with zero gradients
    frozen = train_with(cfg, [BoundObjective("toy", Objective(cross_entropy, freeze), {"ce": 1.0})])
    start = train_with(resolve_config("coop", [*_overrides(cfg), "optim.epochs=0"]), [])
    assert torch.equal(frozen.learner.ctx, start.learner.ctx)
    assert not torch.equal(plain.learner.ctx, start.learner.ctx)


def _overrides(cfg) -> list[str]:
    return ["backbone.name=tiny-vit", f"data.name={cfg.data.name}", f"data.root={cfg.data.root}",
            "data.tau=1.0", "optim.batch_size=8", f"data.cache_dir={cfg.data.cache_dir}", f"seed={cfg.seed}"]


def test_zero_weight_terms_are_logged_but_not_minimised(cfg):
    def with_guide(state):
        return {**cross_entropy(state), "guide": state.logits.pow(2).mean()}

    plain = train_with(cfg, [BoundObjective("toy", Objective(cross_entropy), {"ce": 1.0})])
    guided = train_with(cfg, [BoundObjective("toy", Objective(with_guide), {"ce": 1.0, "guide": 0.0})])
    assert torch.equal(plain.learner.ctx, guided.learner.ctx)


class SnapshotMean(TrainHook):
    """Toy epoch-end average: the learner ends as the mean of its per-epoch states."""

    def __init__(self) -> None:
        super().__init__(None)
        self.snapshots: list[torch.Tensor] = []

    def on_epoch_end(self, learner, epoch):
        self.snapshots.append(learner.ctx.detach().clone())

    def on_train_end(self, learner):
        with torch.no_grad():
            learner.ctx.copy_(torch.stack(self.snapshots).mean(0))

    def state_dict(self):
        return {"snapshots": torch.stack(self.snapshots)} if self.snapshots else {}

    def load_state_dict(self, state):
        self.snapshots = list(state["snapshots"]) if state else []


def test_epoch_end_hook_sees_every_epoch_and_survives_a_resume(cfg, tmp_path, monkeypatch):
    ce = [BoundObjective("toy", Objective(cross_entropy), {"ce": 1.0})]
    hook = SnapshotMean()
    averaged = train_with(cfg, ce, [hook])
    assert len(hook.snapshots) == cfg.optim.epochs
    assert torch.allclose(averaged.learner.ctx, torch.stack(hook.snapshots).mean(0))

    import tailprompt.engine.train as train_mod

    real_save, saves = train_mod.save_checkpoint, []

    class Killed(Exception):
        pass

    def save_then_die(*args):
        real_save(*args)
        saves.append(1)
        if len(saves) == 2:
            raise Killed

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    cfg.optim.checkpoint_every_s = 0.0
    with pytest.raises(Killed):
        train_with(cfg, ce, [SnapshotMean()], checkpoint=tmp_path / "ckpt.safetensors")
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed_hook = SnapshotMean()
    resumed = train_with(cfg, ce, [resumed_hook], checkpoint=tmp_path / "ckpt.safetensors")
    assert len(resumed_hook.snapshots) == cfg.optim.epochs
    assert torch.equal(resumed.learner.ctx, averaged.learner.ctx)


def test_a_run_starts_from_another_runs_prompts(base_overrides, tmp_path):
    backbones = BackboneCache()
    first = execute_run(resolve_config("coop", base_overrides), backbones)
    start = resolve_config("coop", [*base_overrides, f"init.from_run={first.run_dir}", "optim.epochs=0",
                                    f"output_dir={tmp_path / 'second'}"])
    second = prepare_run(start, backbones.get(start.backbone))
    learned = first.run_dir / "prompts.safetensors"
    from safetensors.torch import load_file

    assert torch.equal(second.learner.ctx, load_file(str(learned))["ctx"])
    init = f"init.from_run={first.run_dir}"
    for preset, bad, message in [("cocoop", [], "learner 'coop'"),
                                 ("coop", ["data.name=world_colour_shape_sketch"], "dataset 'eurosat'")]:
        other = resolve_config(preset, [*base_overrides, init, *bad])
        with pytest.raises(ConfigError, match=message):
            prepare_run(other, backbones.get(other.backbone))
    with pytest.raises(ConfigError, match="not a finished run"):
        prepare_run(resolve_config("coop", [*base_overrides, f"init.from_run={tmp_path}"]),
                    backbones.get(start.backbone))


def test_per_step_teacher_views_descriptions_and_extra_images(cfg, tmp_path):
    cfg.data.n_views = 3
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "frozen": [], "desc": [], "extra": []}

    def reader(state):
        seen["teacher"].append(state.teacher_image_feats)
        seen["frozen"].append(state.frozen_image_feats)
        seen["desc"].append(state.description_text_feats)
        seen["extra"].append(state.encode_training_images(state.item_indices))
        return cross_entropy(state)

    reads = frozenset({"teacher_image_feats", "frozen_image_feats", "description_text_feats",
                       "encode_training_images"})
    backbone = BackboneCache().get(cfg.backbone)
    classes = prepare_run(cfg, backbone).plan.train.classnames
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({c: [f"a photo of {c}", f"an image of {c}, seen from above"] for c in classes}))
    descriptions = description_features(backbone, prepare_run(cfg, backbone).plan.train, str(path))
    assert descriptions.shape[:2] == (2, len(classes))
    setup = train_with(cfg, [BoundObjective("toy", Objective(reader), {"ce": 1.0}, reads)],
                       descriptions=descriptions)
    views = setup.inputs.train_views(setup.plan.train, setup.training.items, 3)
    for teacher, frozen in zip(seen["teacher"], seen["frozen"]):
        assert not torch.equal(teacher, frozen)  # always another view of the same image
        for t, f in zip(teacher, frozen):
            index = [v for v in range(3) if any(torch.equal(f, views[v, i]) for i in range(views.shape[1]))]
            assert index and not torch.equal(t, f)
    assert all(any(torch.equal(d, row) for row in descriptions) for d in seen["desc"])
    assert {tuple(d[0, :3].tolist()) for d in seen["desc"]} == {tuple(r[0, :3].tolist()) for r in descriptions}
    for extra in seen["extra"]:
        assert extra.shape[1] == views.shape[2] and torch.allclose(extra.norm(dim=-1), torch.ones(len(extra)))


def test_descriptions_errors_name_the_file_and_classes(cfg, tmp_path):
    backbone = BackboneCache().get(cfg.backbone)
    ds = prepare_run(cfg, backbone).plan.train
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({ds.classnames[0]: ["one sentence"]}))
    with pytest.raises(ConfigError, match=f"partial.json: no descriptions for .*classes.*{ds.classnames[1]}"):
        description_features(backbone, ds, str(partial))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        description_features(backbone, ds, str(broken))
    with pytest.raises(ConfigError, match="data.descriptions"):
        description_features(backbone, ds, None)
