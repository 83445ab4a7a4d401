"""Execute one run: resolve inputs, train, evaluate, and write `runs/<run_id>/` atomically.

The directory is complete once `result.json` exists; it is written last, so a killed run leaves a
folder without it, which the next attempt redoes from scratch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import tailprompt
from tailprompt.backbone import FrozenVLM
from tailprompt.clustering import ClusterResult, ClusterSettings
from tailprompt.data.augment import resolve_augment
from tailprompt.data.descriptions import class_descriptions, descriptions_file, read_descriptions
from tailprompt.data.features import FeatureCache, default_cache_dir
from tailprompt.data.sampling import TrainingSet, sample_training_set
from tailprompt.data.seeding import derived_rng
from tailprompt.data.types import DatasetSplits, Item
from tailprompt.engine.clusters import ClusterCache
from tailprompt.engine.distributed import DistContext, check_distributable
from tailprompt.engine.evaluate import SplitOutputs, split_outputs
from tailprompt.engine.finite import require_finite
from tailprompt.engine.inputs import ImageInputs
from tailprompt.engine.loss import BoundObjective
from tailprompt.engine.optim import lr_at_epoch
from tailprompt.engine.resolve import check_first_stage, resolve_config, run_id, trains_nothing
from tailprompt.engine.run_config import BackboneConfig, OptimConfig, RunConfig
from tailprompt.engine.saved import check_result_shape, open_run
from tailprompt.engine.train import TrainSetup, train_prompts
from tailprompt.files import FileReadError, check_writable, read_json_object
from tailprompt.hooks import HOOKS, TrainHook
from tailprompt.metrics import (
    apply_dac_scaling,
    dac_logit_scaling,
    expected_calibration_error,
    fit_logit_scale_sgd,
    fit_temperature,
    group_accuracy,
    harmonic_mean,
    image_geometry,
    shot_groups,
    split_metrics,
    text_geometry,
    threshold_groups,
)
from tailprompt.objectives import OBJECTIVES, OPTIONAL_FIELDS, ObjectiveContext
from tailprompt.prompts import PromptLearner, build_learner
from tailprompt.prompts.common import template_text_features
from tailprompt.protocols import PROTOCOLS, EvalSplit, ProtocolPlan
from tailprompt.records import RunRecord
from tailprompt.schema import ConfigError, dump_yaml, to_dict
from tailprompt.utils import (
    release_freed_memory,
    resolve_device,
    seed_everything,
    write_json_atomic,
    write_safetensors_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"  # resumable training state while a run is unfinished


@dataclass
class BackboneCache:
    """Backbones loaded in this process, keyed by their config (a sweep loads each once)."""

    loaded: dict[tuple[str, str | None, str | bool, str, str], FrozenVLM] = field(default_factory=dict)

    def get(self, cfg: BackboneConfig) -> FrozenVLM:
        from tailprompt.backbone import load_backbone

        device = str(resolve_device(cfg.device))
        key = (cfg.name, cfg.weights, cfg.quick_gelu, device, cfg.precision)
        if key not in self.loaded:
            self.loaded[key] = load_backbone(
                cfg.name, cfg.weights, device=device, quick_gelu=cfg.quick_gelu, precision=cfg.precision
            )
        return self.loaded[key]


@dataclass
class RunOutcome:
    run_dir: Path
    result: dict[str, Any]
    skipped: bool  # True when a complete result already existed


def is_finished(run_dir: Path) -> bool:
    """Whether the run's `result.json` exists; one that does but is not a finished run's record (truncated,
    edited, of another shape) is a `FileReadError` naming it, never taken for a finished run."""
    return finished_result(run_dir) is not None


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's `result.json`, checked to be a finished run's record (`saved.check_result_shape`); None when
    the run has none."""
    path = run_dir / "result.json"
    if path.is_dir():  # found before training, not when the finished run cannot be written
        raise FileReadError(f"{path}: is a folder, expected a run's result file; remove it to redo the run")
    if not path.is_file():
        return None
    result = read_json_object(path, "result file (delete it to redo the run)")
    try:
        check_result_shape(result, path)
    except FileReadError as e:
        raise FileReadError(f"{e}; delete the result file to redo the run") from None
    return result


def run_directory(cfg: RunConfig, backbone: FrozenVLM) -> Path:
    return Path(cfg.output_dir) / run_id(cfg, backbone.identity, sampling_free=trains_nothing(cfg, backbone))


@dataclass
class RunSetup:
    """Everything a run trains and evaluates with, built once before training."""

    backbone: FrozenVLM
    plan: ProtocolPlan
    training: TrainingSet
    learner: PromptLearner
    frozen_text: Tensor  # [K, D] of the training label space
    objectives: list[BoundObjective]
    hooks: list[TrainHook]
    clusters: ClusterResult  # the objectives' partition, or the default auto one (geometry only)
    clusters_used: bool  # whether an objective trains with `clusters`
    inputs: ImageInputs
    use_cache: bool
    descriptions: Tensor | None  # [n, K, D]
    extra_items: list[Item] = field(default_factory=list)  # more images encode_training_images addresses


@dataclass
class Timings:
    features_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0


def execute_run(
    cfg: RunConfig, backbones: BackboneCache | None = None, progress: bool = False, force: bool = False,
    group: DistContext | None = None,
) -> RunOutcome:
    """Run `cfg` unless its result already exists (then return that result).

    `group`: torchrun's processes training this run together (engine/distributed.py); only rank 0
    evaluates and writes, the others return an empty result once training is done.
    """
    backbones = backbones or BackboneCache()
    t_start = time.perf_counter()
    backbone = backbones.get(cfg.backbone)
    run_dir = run_directory(cfg, backbone)
    done = None if force else finished_result(run_dir)
    if done is not None:
        return RunOutcome(run_dir, done, skipped=True)
    check_writable(run_dir.parent)  # before training, not after it
    if force:  # start from scratch, not from an unfinished attempt's checkpoint
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    if cfg.init.from_preset and not cfg.init.from_run:
        # The first stage, made (or found) now; the run keeps its id and records the folder it started from.
        first = execute_run(stage_one_config(cfg), backbones, progress, group=group)
        if group is not None:
            group.barrier()  # rank 0 has written the first stage's prompts before any rank reads them
        cfg = dataclasses.replace(cfg, init=dataclasses.replace(cfg.init, from_run=str(first.run_dir)))
    seed_everything(cfg.seed)
    setup = prepare_run(cfg, backbone)
    if setup.inputs.cache is not None:
        setup.inputs.cache.progress = progress  # a bar (images/s) while the cache fills
    if group is not None:  # before any collective and before anything is written
        check_distributable(setup.objectives, min(cfg.optim.batch_size, len(setup.training.items)), group)
    timings = Timings()
    t0 = time.perf_counter()
    train_views = cached_features(cfg, setup, group)
    timings.features_s = time.perf_counter() - t0
    if group is not None:
        group.barrier()  # every rank sees the same checkpoint (or none) when training starts
    t0 = time.perf_counter()
    curve = train_prompts(TrainSetup(
        learner=setup.learner, objectives=setup.objectives, frozen_text=setup.frozen_text,
        clusters=setup.clusters.assignment.to(backbone.device) if setup.clusters_used else None,
        dataset=setup.plan.train, items=setup.training.items, inputs=setup.inputs, train_views=train_views,
        optim=cfg.optim, seed=cfg.seed, hooks=setup.hooks, descriptions=setup.descriptions,
        progress=progress and (group is None or group.is_main), checkpoint=run_dir / CHECKPOINT,
        extra_items=setup.extra_items, group=group,
    ))
    timings.train_s = time.perf_counter() - t0
    if group is not None and not group.is_main:
        return RunOutcome(run_dir, {}, skipped=False)  # rank 0 evaluates and writes the run
    release_freed_memory()  # the training graphs' pages, before evaluation allocates its own (peak RSS)
    t0 = time.perf_counter()
    evaluation = evaluate_plan(cfg, setup)
    timings.eval_s = time.perf_counter() - t0
    record = run_record(cfg, setup, evaluation, curve, timings, run_dir.name)
    record.timings["total_s"] = time.perf_counter() - t_start
    result = record.to_json()
    write_run(run_dir, cfg, setup.learner, backbone, evaluation.train_outputs.text_feats, setup.frozen_text, record)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # the run is complete; nothing to resume
    return RunOutcome(run_dir, result, skipped=False)


def stage_one_config(cfg: RunConfig) -> RunConfig:
    """The run `init.from_preset` names, with this run's backbone, data, protocol, eval, seed, output folder and
    step cap (`optim.max_steps`); its schedule otherwise stays the preset's own."""
    first = resolve_config(str(cfg.init.from_preset))
    if cfg.method and first.method == cfg.method:
        raise ConfigError(f"init.from_preset: {cfg.init.from_preset!r} is this run's own method; name its first stage")
    check_first_stage(cfg, first, "init.from_preset")
    return dataclasses.replace(first, backbone=cfg.backbone, data=cfg.data, protocol=cfg.protocol, eval=cfg.eval,
                               seed=cfg.seed, output_dir=cfg.output_dir,
                               optim=dataclasses.replace(first.optim, max_steps=cfg.optim.max_steps))


def prepare_run(cfg: RunConfig, backbone: FrozenVLM) -> RunSetup:
    """Datasets, the sampled training set, the learner (maybe from another run), objectives and hooks."""
    plan = PROTOCOLS.get(cfg.protocol.name)(cfg.data, cfg.protocol)
    train_ds = plan.train
    training = sample_training_set(
        train_ds, cfg.data.shots, cfg.data.tau, cfg.seed, profile=cfg.data.profile,
        counts=cfg.data.counts_file, fewshot_ids=cfg.data.fewshot_ids,
    )
    learner = build_learner(cfg.learner.name, cfg.learner.options, backbone, list(train_ds.classnames),
                            train_ds.template)
    if cfg.init.from_run:
        learner.load_initial_state(initial_prompts(cfg, backbone, learner))
    frozen_text = require_finite(template_text_features(backbone, train_ds.classnames, [train_ds.template]),
                                 "the backbone's frozen text features")
    cache_root = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
    if cfg.data.cache:
        check_writable(cache_root, "cache folder", "data.cache_dir (or $TAILPROMPT_CACHE)")
    select = ClusterCache(cache_root if cfg.data.cache else None)
    specs = [OBJECTIVES.get(o.name) for o in cfg.objectives]
    settings = {o.options.cluster_settings() for o, spec in zip(cfg.objectives, specs) if spec.needs_clusters}
    if len(settings) > 1:
        raise ConfigError("objectives: two objectives need clusters with different settings; use one partition")
    clusters = select(frozen_text, next(iter(settings)) if settings else ClusterSettings())
    log_clusters(clusters, train_ds.classnames)
    extra_items = split_image_pool(cfg, train_ds, training)
    context = ObjectiveContext(frozen_text, list(train_ds.classnames), backbone, clusters if settings else None,
                               train_ds.template, training_labels=[it.label for it in training.items],
                               extra_labels=[it.label for it in extra_items])
    objectives = [BoundObjective(o.name, spec.make(o.options, context), o.weights, spec.reads)
                  for o, spec in zip(cfg.objectives, specs)]
    check_reads(objectives, learner)
    reads = frozenset().union(*(o.reads for o in objectives))
    descriptions = None
    if "description_text_feats" in reads:
        path = cfg.data.descriptions and str(descriptions_file(cfg.data.descriptions, cfg.data.name))
        descriptions = description_features(backbone, train_ds, path)
    elif cfg.data.descriptions:
        log.warning("data.descriptions is set (%s) but no configured objective reads class descriptions; "
                    "it is ignored", cfg.data.descriptions)
    use_cache = cfg.data.cache and not learner.uses_image_tower
    cache = FeatureCache(cache_root, num_workers=cfg.data.num_workers) if use_cache else None
    augment = resolve_augment(cfg.data.augment, train_ds.augment)
    inputs = ImageInputs(backbone, cache, backbone.device, cfg.data.batch_size_eval, cfg.data.num_workers, augment)
    return RunSetup(
        backbone=backbone, plan=plan, training=training, learner=learner, frozen_text=frozen_text,
        objectives=objectives, hooks=[HOOKS.get(h.name)(h.options) for h in cfg.hooks], clusters=clusters,
        clusters_used=bool(settings), inputs=inputs, use_cache=use_cache, descriptions=descriptions,
        extra_items=extra_items,
    )


def split_image_pool(cfg: RunConfig, train_ds: DatasetSplits, training: TrainingSet) -> list[Item]:
    """The training split's images that are not training items, when an objective draws extra images from
    the whole split (its config sets `image_pool: train_split`, DPC's reference image list); else none."""
    if not any(getattr(o.options, "image_pool", None) == "train_split" for o in cfg.objectives):
        return []
    used = {it.key for it in training.items}
    return [it for it in train_ds.train if it.key not in used]


def check_reads(objectives: list[BoundObjective], learner: PromptLearner) -> None:
    """Every name an objective reads is an optional `StepState` field or an aux output of the learner."""
    for obj in objectives:
        unknown = sorted(obj.reads - OPTIONAL_FIELDS - learner.provides)
        if unknown:
            raise ConfigError(
                f"objectives: {obj.name} reads {unknown}, which learner {learner.name!r} does not provide "
                f"(it provides {sorted(learner.provides) or 'nothing extra'}); pick a learner that does"
            )


def log_clusters(result: ClusterResult, classnames: list[str]) -> None:
    log.info("clusters: M=%d, sizes %s (%s)", result.n_clusters, result.sizes, result.criterion)
    for m in range(result.n_clusters):
        members = [n for n, c in zip(classnames, result.assignment.tolist()) if c == m]
        log.debug("cluster %d: %s", m, ", ".join(members))


def initial_prompts(cfg: RunConfig, backbone: FrozenVLM, learner: PromptLearner) -> dict[str, Tensor]:
    """The prompt state of the finished run `init.from_run`, read as every command reads a run folder
    (`open_run`) and checked to fit this run."""
    source = Path(str(cfg.init.from_run))
    try:
        saved = open_run(source)
    except FileReadError as e:
        raise ConfigError(f"init.from_run: {source} is not a finished run folder ({e})") from None
    wanted, other, trained_on = learner.base_name, saved.config, saved.meta.get("backbone_identity")
    problems = []
    if trained_on != backbone.identity:
        problems.append(f"backbone {trained_on} (this run: {backbone.identity})")
    if other.data.name != cfg.data.name:
        problems.append(f"dataset {other.data.name!r} (this run: {cfg.data.name!r})")
    if other.learner.name != wanted:
        problems.append(f"learner {other.learner.name!r} (this run starts from a {wanted!r} run)")
    if problems:
        raise ConfigError(f"init.from_run: {source} was trained with " + "; ".join(problems))
    return saved.prompts


def description_features(backbone: FrozenVLM, ds: DatasetSplits, path: str | None) -> Tensor:
    """`[n, K, D]` normalised frozen features of the class descriptions: `data.descriptions`, else the dataset's own.

    Description index i of class k is `sentences_k[i % len(sentences_k)]`, with n the largest count, so
    classes with fewer sentences repeat theirs.
    """
    by_class = read_descriptions(path) if path else ds.descriptions
    if by_class is None:
        raise ConfigError(
            f"data.descriptions: an objective reads class descriptions, but none were given and dataset "
            f"{ds.name!r} has none; set data.descriptions to a JSON file {{classname: [sentence, ...]}} "
            "or to a folder of them named as CoPrompt's gpt_file/"
        )
    where = f"data.descriptions: {path}" if path else f"dataset {ds.name}"
    sentences = class_descriptions(by_class, ds.classnames, where)
    n = max(len(s) for s in sentences)
    try:
        # Sentences as written: CoPrompt's gpt_clip_classifier cleans only the class-name key it looks up.
        feats = [template_text_features(backbone, [s[i % len(s)] for s in sentences], ["{}"], clean=False)
                 for i in range(n)]
    except ValueError as e:  # a sentence longer than the text tower's context
        raise ConfigError(f"{where}: {e}") from None
    return torch.stack(feats)


def cached_features(cfg: RunConfig, setup: RunSetup, group: DistContext | None = None) -> Tensor | None:
    """Fill the feature cache for the training views and every evaluation split; the training views.

    Under torchrun (`group`) each rank encodes a share of the missing images.
    """
    if not setup.use_cache:
        return None
    train_ds = setup.plan.train
    items = setup.training.items + setup.extra_items  # batches index the first part
    train_views = setup.inputs.train_views(train_ds, items, cfg.data.n_views, shard=group)
    for split in setup.plan.evals:  # warm the eval features now so that phase timings stay honest
        setup.inputs.features(split.dataset, split.dataset.test, view=0, shard=group)
    return train_views


def run_record(
    cfg: RunConfig, setup: RunSetup, evaluation: PlanEvaluation, curve: dict[str, list[float]], timings: Timings,
    name: str,
) -> RunRecord:
    """The result.json record of a finished run (schema: docs/results.md)."""
    train_ds, training = setup.plan.train, setup.training
    train_split = evaluation.train_split
    accuracy = train_split["per_class_accuracy"]  # None for a class without test images: NaN, skipped by groups
    per_class = torch.tensor([float("nan") if accuracy[c] is None else accuracy[c] for c in train_ds.classnames])
    groups_idx = class_groups(list(training.counts.values()), cfg.eval.groups)  # label order
    groups = group_accuracy(per_class, groups_idx)
    groups["classes"] = {g: [train_ds.classnames[i] for i in idx] for g, idx in groups_idx.items()}
    learned_text = evaluation.train_outputs.text_feats
    test_out = evaluation.train_outputs
    clusters = setup.clusters.assignment.to(learned_text.device)
    geometry = {}
    if cfg.eval.geometry:
        geometry = {
            "learned": text_geometry(learned_text, clusters),
            "frozen": text_geometry(setup.frozen_text, clusters),
            "image": image_geometry(test_out.image_feats, test_out.labels, learned_text, cfg.eval.nc1_global_mean),
        }
    hm = None
    if setup.plan.harmonic_of:
        a, b = setup.plan.harmonic_of
        hm = harmonic_mean(evaluation.splits[a]["accuracy"], evaluation.splits[b]["accuracy"])
    clusters_record = {**setup.clusters.record(), "used_by_objective": setup.clusters_used}
    clusters_record["assignment"] = dict(zip(list(training.counts), map(int, clusters_record["assignment"])))
    return RunRecord(
        run_id=name,
        method=cfg.method or cfg.learner.name,
        seed=cfg.seed,
        dataset=cfg.data.name,
        protocol=cfg.protocol.name,
        protocol_label=setup.plan.label,
        split_roles=setup.plan.roles(),
        sampling_independent=trains_nothing(cfg, setup.backbone),  # one result for every tau x seed (report)
        tau=cfg.data.tau,
        shots=cfg.data.shots,
        learner=cfg.learner.name,
        template=setup.plan.train.template,  # the hand template the prompts replace (predict, export)
        backbone={
            "name": cfg.backbone.name, "identity": setup.backbone.identity, "precision": setup.backbone.precision
        },
        config=to_dict(cfg),
        versions=versions(),
        device=str(setup.backbone.device),
        sampling={"counts": training.counts, "ids": training.ids},
        augment=to_dict(setup.inputs.augment),
        splits=evaluation.splits,
        hm=hm,
        groups=groups,
        geometry=geometry,
        clusters=clusters_record,
        loss_curve=curve,
        timings={"features_s": timings.features_s, "train_s": timings.train_s, "eval_s": timings.eval_s},
    )


@dataclass
class PlanEvaluation:
    splits: dict[str, dict[str, Any]]
    train_split: dict[str, Any]
    train_outputs: SplitOutputs


def evaluate_plan(cfg: RunConfig, setup: RunSetup) -> PlanEvaluation:
    """Metrics of every evaluation split, with post-hoc temperature scaling and DAC where they apply."""
    learner, inputs, evals = setup.learner, setup.inputs, setup.plan.evals
    train_space = next(s for s in evals if s.is_training_space)
    temperature, fitted_on = cfg.eval.temperature, "fixed (eval.temperature)"
    if temperature is None and cfg.eval.fit_temperature:
        temperature, fitted_on = _fitted_temperature(learner, train_space, setup.training, inputs, cfg)
    elif temperature is None:
        fitted_on = None
    splits: dict[str, dict[str, Any]] = {}
    train_outputs: SplitOutputs | None = None
    for split in sorted(evals, key=lambda s: not s.is_training_space):  # training space first (DAC needs it)
        log.info("evaluating %s: %d test images, %d classes", split.name, len(split.dataset.test),
                 split.dataset.num_classes)
        ds = split.dataset
        learner.set_classnames(list(ds.classnames), ds.template, seen=split.is_training_space)
        out = split_outputs(learner, ds, ds.test, inputs)
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
            zs_new = template_text_features(setup.backbone, ds.classnames, [ds.template])
            factors = dac_logit_scaling(setup.frozen_text, zs_new, train_outputs.text_feats, out.text_feats,
                                        k=cfg.eval.dac_k)
            scaled = apply_dac_scaling(out.logits, factors)
            block["ece_dac"] = expected_calibration_error(torch.softmax(scaled, -1), out.labels, cfg.eval.ece_bins)
        splits[split.name] = block
    learner.set_classnames(list(train_space.dataset.classnames), train_space.dataset.template)
    assert train_outputs is not None
    return PlanEvaluation(splits, splits[train_space.name], train_outputs)


def calibration_items(
    ds: DatasetSplits, training: TrainingSet, seed: int, per_class: int = 4
) -> tuple[list[Item], str]:
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
    held_out: list[Item] = []
    for label in range(ds.num_classes):
        pool = [it for it in ds.train if it.label == label and it.key not in used and it.key not in test_keys]
        order = derived_rng("calibration", seed, label).permutation(len(pool))
        held_out.extend(pool[i] for i in order[:per_class])
    if held_out:
        return held_out, f"held-out training images (up to {per_class} per class, not trained on)"
    return list(training.items), "training images (no held-out image available; optimistic)"


# The DAC repository's temperature-scaling schedule (configs/calibration/TempScaling/ep20_lr5e-2.yaml).
DAC_TEMPERATURE_OPTIM = OptimConfig(lr=0.05, epochs=20, batch_size=100, warmup_epochs=1, warmup_lr=1e-5)


def _fitted_temperature(
    learner: PromptLearner, train_space: EvalSplit, training: TrainingSet, inputs: ImageInputs, cfg: RunConfig
) -> tuple[float, str]:
    items, source = calibration_items(train_space.dataset, training, cfg.seed)
    out = split_outputs(learner, train_space.dataset, items, inputs)
    if cfg.eval.temperature_fit == "lbfgs":
        return float(fit_temperature(out.logits, out.labels)), source
    scale = float(inputs.backbone.logit_scale)  # the logits' own: cos = logits / scale
    o = DAC_TEMPERATURE_OPTIM
    learned = fit_logit_scale_sgd(out.logits / scale, out.labels, [lr_at_epoch(e, o) for e in range(o.epochs)],
                                  o.batch_size, momentum=o.momentum, weight_decay=o.weight_decay)
    return scale / learned, f"{source}, DAC's SGD recipe"


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
    run_dir: Path, cfg: RunConfig, learner: PromptLearner, backbone: FrozenVLM, learned_text: Tensor,
    frozen_text: Tensor, record: RunRecord,
) -> None:
    """Write the run's files; `result.json` last so its presence means the run is complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    state = {k: v.detach().float().cpu().contiguous() for k, v in learner.prompt_state().items()}
    meta = {"backbone_identity": backbone.identity, "learner": cfg.learner.name,
            "classnames": json.dumps(list(record.sampling["counts"])), "template": record.template}
    write_safetensors_atomic(run_dir / "prompts.safetensors", state, meta, "prompts")
    texts = {"learned_text": learned_text, "frozen_text": frozen_text}
    texts = {k: v.float().cpu().contiguous() for k, v in texts.items()}
    write_safetensors_atomic(run_dir / "features.safetensors", texts, what="features")
    write_json_atomic(run_dir / "result.json", record.to_json())
