"""`tailprompt eval`: evaluate a finished run's prompts, or a released reference checkpoint, on a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailprompt.cli import user_errors
from tailprompt.errors import UserError

if TYPE_CHECKING:
    from tailprompt.data.types import DatasetSplits
    from tailprompt.engine.run_config import RunConfig
    from tailprompt.prompts import PromptLearner


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run's prompts, or a released reference checkpoint, on a dataset",
        description="Evaluate prompts on DATASET's test split and print the metrics. With --run: a finished "
        "run's prompts.safetensors; the class-name buffers are rebuilt for DATASET (only the prompt parameters "
        "transfer, as in the reference code) and the metrics are saved as runs/<id>/eval_<dataset>_<classes>.json. "
        "With --prompts FILE --learner NAME: a checkpoint released with the reference code (Dassl's "
        "`model.pth.tar-N` of CoOp, CoCoOp, KgCoOp or MaPLe, or a prompt state dict / .safetensors), with the "
        "backbone and learner options from --config / --set (e.g. --set learner.n_ctx=16 --set learner.ctx_init=''); "
        "--out saves the metrics.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a finished run folder (OUTPUT_DIR/<run_id>/)")
    source.add_argument("--prompts", metavar="FILE", help="a reference checkpoint (model.pth.tar-N) or prompt state")
    p.add_argument("--learner", default=None, help="with --prompts: the learner the checkpoint belongs to (coop, ...)")
    p.add_argument("--config", default=None, help="with --prompts: a preset or YAML file for backbone / learner keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --prompts: override a config key, e.g. --set backbone.name=ViT-B-16 (repeatable)")
    p.add_argument("--dataset", required=True, help="dataset name (see `tailprompt list datasets`)")
    p.add_argument("--root", default=None, help="folder holding the dataset folders (default: the config's data.root)")
    p.add_argument("--classes", default="all", choices=["all", "base", "new"])
    p.add_argument("--out", default=None, help="with --prompts: also write the metrics to this JSON file")
    p.add_argument("--stage1", metavar="FILE", default=None,
                   help="with --prompts and a second-stage learner (dpc): the first stage's prompt checkpoint "
                        "(e.g. the reference's stage-1 CoOp model.pth.tar-N); --classes base then evaluates the "
                        "trained prompts, all and new the new-class mix (all on imagenet: the trained prompts), "
                        "as the reference's load_model")
    p.set_defaults(func=run)


LONG_FIELDS = ("per_class_accuracy", "reliability", "classnames")  # kept in the saved JSON only


def run(args: argparse.Namespace) -> int:
    with user_errors():
        if args.run is not None:
            if args.learner or args.config or args.overrides or args.out or args.stage1:
                raise UserError("--learner, --config, --set, --out and --stage1 go with --prompts; a run brings its "
                                "own config and first stage, and saves its metrics in its folder")
            metrics = evaluate_run(Path(args.run), args.dataset, args.root, args.classes)
        else:
            if not args.learner:
                raise UserError("--prompts needs --learner NAME (the learner the checkpoint was trained with)")
            if args.out:
                from tailprompt.files import check_output_file

                check_output_file(args.out, "--out", (".json",))  # before the evaluation, not after it
            metrics = evaluate_prompts_file(Path(args.prompts), args.learner, args.config, args.overrides,
                                            args.dataset, args.root, args.classes, args.stage1)
            if args.out:
                from tailprompt.utils import write_json_atomic

                write_json_atomic(args.out, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k not in LONG_FIELDS}, indent=2))
    return 0


def evaluate_run(run_dir: Path, dataset: str, root: str | None, classes: str) -> dict[str, Any]:
    from tailprompt.engine.saved import open_run, run_backbone, run_learner
    from tailprompt.files import check_output_file
    from tailprompt.utils import configure_threads, write_json_atomic
    from tailprompt.world import datasets as _world_datasets  # noqa: F401  (registers the world datasets)

    saved = open_run(run_dir)
    out = check_output_file(run_dir / f"eval_{dataset}_{classes}.json", "--run")  # a read-only run: said first
    configure_threads()
    backbone = run_backbone(saved)
    cfg = saved.config
    ds = _dataset(cfg, dataset, root, classes)
    learner = run_learner(saved, backbone, list(ds.classnames), ds.template)
    metrics = {"dataset": dataset, "classes": classes, **_metrics(cfg, learner, ds, saved.run_dir)}
    write_json_atomic(out, metrics)
    return metrics


def evaluate_prompts_file(path: Path, learner_name: str, config: str | None, overrides: list[str], dataset: str,
                          root: str | None, classes: str, stage1: str | None = None) -> dict[str, Any]:
    """Metrics of a released checkpoint's prompts with the learner and backbone the config describes; a
    second stage's (`stage1`) first-stage prompts are loaded before its own."""
    from tailprompt.engine.run import BackboneCache
    from tailprompt.engine.saved import load_prompts, read_prompt_checkpoint
    from tailprompt.prompts import LEARNERS, build_learner
    from tailprompt.utils import configure_threads

    state = read_prompt_checkpoint(path)
    cfg = released_config(config, learner_name, dataset, overrides)
    second_stage = LEARNERS.get(cfg.learner.name).needs_initial_state
    if second_stage and stage1 is None:
        raise UserError(f"--learner {learner_name} is a second stage: give its first stage's prompts with "
                        f"--stage1 FILE (e.g. the stage-1 model.pth.tar-N its training started from)")
    if stage1 is not None and not second_stage:
        raise UserError(f"--stage1 is for second-stage learners (dpc); {learner_name} has no first stage")
    first = read_prompt_checkpoint(stage1) if stage1 is not None else None  # a bad file said before any work
    configure_threads()
    backbone = BackboneCache().get(cfg.backbone)
    ds = _dataset(cfg, dataset, root, classes)
    learner = build_learner(cfg.learner.name, cfg.learner.options, backbone, list(ds.classnames), ds.template)
    if first is not None:
        load_prompts(learner, first, stage1, initial=True)
    load_prompts(learner, state, path)
    # The reference's load_model: the trained prompts on base classes (and on all of ImageNet), else the
    # new-class mix. Built as seen; only an unseen label space is set again.
    if not (classes == "base" or (classes == "all" and dataset == "imagenet")):
        learner.set_classnames(list(ds.classnames), ds.template, seen=False)
    return {"prompts": str(path), "learner": learner_name, "backbone": backbone.identity, "dataset": dataset,
            "classes": classes, **_metrics(cfg, learner, ds, path)}


def released_config(config: str | None, learner_name: str, dataset: str, overrides: list[str]) -> RunConfig:
    """The config a released checkpoint is evaluated with: `dataset` is set first, so a preset's per-dataset
    table (CoPrompt's depth and context length, as the reference's eval-only runs apply it) follows it."""
    from tailprompt.engine.resolve import resolve_config

    cfg = resolve_config(config, [f"learner.name={learner_name}", f"data.name={dataset}", *overrides])
    if cfg.learner.name != learner_name:  # a --set learner.name=... would evaluate one learner and report another
        raise UserError(f"--set learner.name={cfg.learner.name} contradicts --learner {learner_name}; give the "
                        f"learner once, with --learner")
    return cfg


def _dataset(cfg: RunConfig, dataset: str, root: str | None, classes: str) -> DatasetSplits:
    from tailprompt.data.registry import load_dataset
    from tailprompt.data.sampling import select_classes
    from tailprompt.protocols import with_template

    options = with_template(cfg.data, dataset, cfg.data.options if dataset == cfg.data.name else {})
    return select_classes(load_dataset(dataset, root if root is not None else cfg.data.root, options), classes)


def _metrics(cfg: RunConfig, learner: PromptLearner, ds: DatasetSplits, source: str | Path) -> dict[str, Any]:
    """Metrics of the learner on `ds`'s test split; prompts (from `source`) that give non-finite logits are a
    `UserError`, not a result of NaNs."""
    import torch

    from tailprompt.data.features import FeatureCache
    from tailprompt.engine.evaluate import split_outputs
    from tailprompt.engine.inputs import ImageInputs
    from tailprompt.metrics import split_metrics

    backbone = learner.backbone
    use_cache = cfg.data.cache and not learner.uses_image_tower
    cache = FeatureCache(cfg.data.cache_dir, cfg.data.num_workers) if use_cache else None
    inputs = ImageInputs(backbone, cache, backbone.device, cfg.data.batch_size_eval, cfg.data.num_workers)
    out = split_outputs(learner, ds, ds.test, inputs)
    if not torch.isfinite(out.logits).all():
        raise UserError(f"{source}: these prompts give non-finite logits on {ds.name} (overflowing or NaN prompt "
                        f"values?); no metrics written")
    return split_metrics(out.logits, out.labels, list(ds.classnames), n_bins=cfg.eval.ece_bins)
