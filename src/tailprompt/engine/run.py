"""Execute one run: resolve inputs, train, evaluate, and write `runs/<run_id>/` atomically.

The directory is complete once `result.json` exists; it is written last, so a killed run leaves a
folder without it, which the next attempt redoes from scratch.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

import tailprompt
from tailprompt.config import ConfigError, dump_yaml, to_dict
from tailprompt.data.augment import resolve_augment
from tailprompt.data.features import FeatureCache, default_cache_dir
from tailprompt.data.sampling import sample_training_set
from tailprompt.data.seeding import derived_rng
from tailprompt.engine.clusters import ClusterCache
from tailprompt.engine.config import BackboneConfig, RunConfig
from tailprompt.engine.evaluate import SplitOutputs, frozen_text_features, split_outputs
from tailprompt.engine.inputs import ImageInputs
from tailprompt.engine.protocols import PROTOCOLS, EvalSplit
from tailprompt.engine.resolve import learner_config, objective_parts, run_id
from tailprompt.engine.steps import BoundObjective
from tailprompt.engine.train import TrainSetup, train_prompts
from tailprompt.metrics import (
    apply_dac_scaling,
    dac_logit_scaling,
    expected_calibration_error,
    fit_temperature,
    group_accuracy,
    harmonic_mean,
    image_geometry,
    shot_groups,
    split_metrics,
    text_geometry,
    threshold_groups,
)
from tailprompt.prompts import LEARNERS
from tailprompt.utils import atomic_path, resolve_device, seed_everything, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"  # resumable training state while a run is unfinished


@dataclass
class BackboneCache:
    """Backbones loaded in this process, keyed by their config (a sweep loads each once)."""

    loaded: dict[tuple[str, str | None, str, str], Any] = field(default_factory=dict)

    def get(self, cfg: BackboneConfig) -> Any:
        from tailprompt.backbone import load_backbone

        device = str(resolve_device(cfg.device))
        key = (cfg.name, cfg.weights, cfg.quick_gelu, device)
        if key not in self.loaded:
            self.loaded[key] = load_backbone(cfg.name, cfg.weights, device=device, quick_gelu=cfg.quick_gelu)
        return self.loaded[key]


@dataclass
class RunOutcome:
    run_dir: Path
    result: dict[str, Any]
    skipped: bool  # True when a complete result already existed


def run_directory(cfg: RunConfig, backbone: Any) -> Path:
    return Path(cfg.output_dir) / run_id(cfg, backbone.identity)


def execute_run(
    cfg: RunConfig, backbones: BackboneCache | None = None, progress: bool = False, force: bool = False
) -> RunOutcome:
    """Run `cfg` unless its result already exists (then return that result)."""
    backbones = backbones or BackboneCache()
    t_start = time.perf_counter()
    backbone = backbones.get(cfg.backbone)
    run_dir = run_directory(cfg, backbone)
    result_path = run_dir / "result.json"
    if result_path.is_file() and not force:
        return RunOutcome(run_dir, json.loads(result_path.read_text()), skipped=True)
    if force:  # start from scratch, not from an unfinished attempt's checkpoint
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    seed_everything(cfg.seed)
    device = backbone.device if isinstance(backbone.device, torch.device) else torch.device(backbone.device)

    plan = PROTOCOLS.get(cfg.protocol.name)(cfg)
    train_ds = plan.train
    training = sample_training_set(
        train_ds, cfg.data.shots, cfg.data.tau, cfg.seed, profile=cfg.data.profile,
        counts=cfg.data.counts_file, fewshot_ids=cfg.data.fewshot_ids,
    )
    spec = LEARNERS.get(cfg.learner["name"])
    learner = spec.build(learner_config(cfg), backbone, list(train_ds.classnames), train_ds.template).to(device)
    frozen_text = frozen_text_features(backbone, train_ds.classnames, train_ds.template)

    cache_root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    select = ClusterCache(cache_root if cfg.data.cache else None)
    context: dict[str, Any] = {"frozen_text_feats": frozen_text, "classnames": list(train_ds.classnames),
                               "record": {}, "select_clusters": select}
    objectives = []
    for i, entry in enumerate(cfg.objectives):
        ospec, ocfg, weights = objective_parts(entry, f"objectives[{i}]")
        objectives.append(BoundObjective(entry["name"], ospec.build(ocfg, context), weights))
    clusters_record = context["record"].get("clusters")
    if clusters_record is not None:
        clusters_record = {**clusters_record, "used_by_objective": True}
    else:  # no objective clustered: the same auto partition, for geometry only
        clusters_record = {**select(frozen_text, "auto").record(), "used_by_objective": False}
    clusters = torch.as_tensor(clusters_record["assignment"], device=device)

    use_cache = cfg.data.cache and not spec.uses_image_tower
    cache = None
    if use_cache:
        cache = FeatureCache(cache_root, num_workers=cfg.data.num_workers)
    augment = resolve_augment(cfg.data.augment, train_ds.augment)
    inputs = ImageInputs(backbone, cache, device, cfg.data.batch_size_eval, cfg.data.num_workers, augment)

    t0 = time.perf_counter()
    train_views = inputs.train_views(train_ds, training.items, cfg.data.n_views) if use_cache else None
    if use_cache:  # warm the eval features now so that phase timings stay honest
        for split in plan.evals:
            inputs.features(split.dataset, split.dataset.test, view=0)
    t_features = time.perf_counter() - t0

    t0 = time.perf_counter()
    curve = train_prompts(TrainSetup(
        learner=learner, spec=spec, objectives=objectives, frozen_text=frozen_text, clusters=clusters,
        dataset=train_ds, items=training.items, inputs=inputs, train_views=train_views, optim=cfg.optim,
        seed=cfg.seed, progress=progress, checkpoint=run_dir / CHECKPOINT,
    ))
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluation = evaluate_plan(cfg, backbone, learner, spec, plan.evals, training, inputs, frozen_text)
    t_eval = time.perf_counter() - t0

    train_split = evaluation.train_split
    per_class = torch.tensor([train_split["per_class_accuracy"][c] for c in train_ds.classnames])
    groups_idx = class_groups(list(training.counts.values()), cfg.eval.groups)  # label order
    groups = group_accuracy(per_class, groups_idx)
    groups["classes"] = {g: [train_ds.classnames[i] for i in idx] for g, idx in groups_idx.items()}

    learned_text = evaluation.train_outputs.text_feats
    test_out = evaluation.train_outputs
    geometry = {}
    if cfg.eval.geometry:
        geometry = {
            "learned": text_geometry(learned_text, clusters),
            "frozen": text_geometry(frozen_text, clusters),
            "image": image_geometry(test_out.image_feats, test_out.labels, learned_text),
        }
    hm = None
    if plan.harmonic_of:
        a, b = plan.harmonic_of
        hm = harmonic_mean(evaluation.splits[a]["accuracy"], evaluation.splits[b]["accuracy"])

    result = {
        "run_id": run_dir.name,
        "method": cfg.method or cfg.learner["name"],
        "seed": cfg.seed,
        "dataset": cfg.data.name,
        "protocol": cfg.protocol.name,
        "tau": cfg.data.tau,
        "shots": cfg.data.shots,
        "learner": cfg.learner["name"],
        "backbone": {"name": cfg.backbone.name, "identity": backbone.identity},
        "config": to_dict(cfg),
        "versions": versions(),
        "device": str(device),
        "sampling": {"counts": training.counts, "ids": training.ids},
        "augment": to_dict(augment),
        "splits": evaluation.splits,
        "hm": hm,
        "groups": groups,
        "geometry": geometry,
        "clusters": {**clusters_record,
                     "assignment": dict(zip(list(training.counts), map(int, clusters_record["assignment"])))},
        "loss_curve": curve,
        "timings": {"features_s": t_features, "train_s": t_train, "eval_s": t_eval,
                    "total_s": time.perf_counter() - t_start},
    }
    write_run(run_dir, cfg, learner, backbone, learned_text, frozen_text, result)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # the run is complete; nothing to resume
    return RunOutcome(run_dir, result, skipped=False)


@dataclass
class PlanEvaluation:
    splits: dict[str, dict[str, Any]]
    train_split: dict[str, Any]
    train_outputs: SplitOutputs


def evaluate_plan(
    cfg: RunConfig, backbone: Any, learner: Any, spec: Any, evals: list[EvalSplit], training: Any,
    inputs: ImageInputs, frozen_text: Tensor,
) -> PlanEvaluation:
    """Metrics of every evaluation split, with post-hoc temperature scaling and DAC where they apply."""
    train_space = next(s for s in evals if s.is_training_space)
    temperature, fitted_on = cfg.eval.temperature, "fixed (eval.temperature)"
    if temperature is None and cfg.eval.fit_temperature:
        temperature, fitted_on = _fitted_temperature(learner, spec, train_space, training, inputs, cfg.seed)
    elif temperature is None:
        fitted_on = None
    splits: dict[str, dict[str, Any]] = {}
    train_outputs: SplitOutputs | None = None
    for split in sorted(evals, key=lambda s: not s.is_training_space):  # training space first (DAC needs it)
        ds = split.dataset
        learner.set_classnames(list(ds.classnames), ds.template)
        out = split_outputs(learner, spec, ds, ds.test, inputs)
        block = split_metrics(out.logits, out.labels, list(ds.classnames), n_bins=cfg.eval.ece_bins)
        block["temperature"] = temperature
        block["temperature_source"] = fitted_on
        block["ece_temperature_scaled"] = None
        if temperature is not None and len(out.labels):
            probs = torch.softmax(out.logits / temperature, dim=-1)
            block["ece_temperature_scaled"] = expected_calibration_error(probs, out.labels, cfg.eval.ece_bins)
        block["ece_dac"] = None
        if split.is_training_space:
            train_outputs = out
        elif cfg.eval.dac and train_outputs is not None and len(out.labels):
            zs_new = frozen_text_features(backbone, ds.classnames, ds.template)
            factors = dac_logit_scaling(frozen_text, zs_new, train_outputs.text_feats, out.text_feats, k=cfg.eval.dac_k)
            scaled = apply_dac_scaling(out.logits, factors)
            block["ece_dac"] = expected_calibration_error(torch.softmax(scaled, -1), out.labels, cfg.eval.ece_bins)
        splits[split.name] = block
    learner.set_classnames(list(train_space.dataset.classnames), train_space.dataset.template)
    assert train_outputs is not None
    return PlanEvaluation(splits, splits[train_space.name], train_outputs)


def calibration_items(ds: Any, training: Any, seed: int, per_class: int = 4) -> tuple[list[Any], str]:
    """Held-out labelled images to fit the temperature on, and where they come from.

    The few-shot validation split when it shares no image with the test split; otherwise (no val split,
    or ImageNet whose val is its test set in the CoOp readers) up to `per_class` training-split images per
    class that the run did not train on, drawn with a seed-derived generator; the training images
    themselves only as a last resort (optimistic, and said so).
    """
    test_keys = {it.key for it in ds.test}
    val = [it for it in training.val_items if it.key not in test_keys]
    if val and len(val) == len(training.val_items):
        return val, "few-shot validation split"
    used = {it.key for it in training.items}
    held_out: list[Any] = []
    for label in range(ds.num_classes):
        pool = [it for it in ds.train if it.label == label and it.key not in used and it.key not in test_keys]
        order = derived_rng("calibration", seed, label).permutation(len(pool))
        held_out.extend(pool[i] for i in order[:per_class])
    if held_out:
        return held_out, f"held-out training images (up to {per_class} per class, not trained on)"
    return list(training.items), "training images (no held-out image available; optimistic)"


def _fitted_temperature(
    learner: Any, spec: Any, train_space: EvalSplit, training: Any, inputs: ImageInputs, seed: int
) -> tuple[float, str]:
    items, source = calibration_items(train_space.dataset, training, seed)
    out = split_outputs(learner, spec, train_space.dataset, items, inputs)
    return float(fit_temperature(out.logits, out.labels)), source


def class_groups(counts: list[int], rule: str) -> dict[str, list[int]]:
    """Head / medium / tail classes: the papers' thirds, or the long-tail benchmarks' shot thresholds."""
    if rule == "thirds":
        return shot_groups(counts)
    if rule == "thresholds":
        return threshold_groups(counts)
    raise ConfigError(f"eval.groups: expected 'thirds' or 'thresholds', got {rule!r}")


def versions() -> dict[str, str]:
    import open_clip

    return {"tailprompt": tailprompt.__version__, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version()}


def write_run(
    run_dir: Path, cfg: RunConfig, learner: Any, backbone: Any, learned_text: Tensor, frozen_text: Tensor,
    result: dict[str, Any],
) -> None:
    """Write the run's files; `result.json` last so its presence means the run is complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    state = {k: v.detach().float().cpu().contiguous() for k, v in learner.prompt_state().items()}
    meta = {"backbone_identity": backbone.identity, "learner": cfg.learner["name"],
            "classnames": json.dumps(list(result["sampling"]["counts"]))}
    with atomic_path(run_dir / "prompts.safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)
    with atomic_path(run_dir / "features.safetensors") as tmp:
        save_file({"learned_text": learned_text.float().cpu().contiguous(),
                   "frozen_text": frozen_text.float().cpu().contiguous()}, str(tmp))
    write_json_atomic(run_dir / "result.json", result)
