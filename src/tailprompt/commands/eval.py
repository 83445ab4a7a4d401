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
    p.set_defaults(func=run)


LONG_FIELDS = ("per_class_accuracy", "reliability", "classnames")  # kept in the saved JSON only


def run(args: argparse.Namespace) -> int:
    with user_errors():
        if args.run is not None:
            if args.learner or args.config or args.overrides or args.out:
                raise UserError("--learner, --config, --set and --out go with --prompts; a run brings its own config "
                                "and saves its metrics in its folder")
            metrics = evaluate_run(Path(args.run), args.dataset, args.root, args.classes)
        else:
            if not args.learner:
                raise UserError("--prompts needs --learner NAME (the learner the checkpoint was trained with)")
            if args.out:
                from tailprompt.files import check_output_file

                check_output_file(args.out, "--out", (".json",))  # before the evaluation, not after it
            metrics = evaluate_prompts_file(Path(args.prompts), args.learner, args.config, args.overrides,
                                            args.dataset, args.root, args.classes)
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
    metrics = {"dataset": dataset, "classes": classes, **_metrics(cfg, learner, ds)}
    write_json_atomic(out, metrics)
    return metrics


def evaluate_prompts_file(path: Path, learner_name: str, config: str | None, overrides: list[str], dataset: str,
                          root: str | None, classes: str) -> dict[str, Any]:
    """Metrics of a released checkpoint's prompts with the learner and backbone the config describes."""
    from tailprompt.engine.resolve import resolve_config
    from tailprompt.engine.run import BackboneCache
    from tailprompt.engine.saved import load_prompts, read_prompt_checkpoint
    from tailprompt.prompts import build_learner
    from tailprompt.utils import configure_threads

    state = read_prompt_checkpoint(path)
    cfg = resolve_config(config, [f"learner.name={learner_name}", *overrides])
    configure_threads()
    backbone = BackboneCache().get(cfg.backbone)
    ds = _dataset(cfg, dataset, root, classes)
    learner = build_learner(cfg.learner.name, cfg.learner.options, backbone, list(ds.classnames), ds.template)
    load_prompts(learner, state, path)
    return {"prompts": str(path), "learner": learner_name, "backbone": backbone.identity, "dataset": dataset,
            "classes": classes, **_metrics(cfg, learner, ds)}


def _dataset(cfg: RunConfig, dataset: str, root: str | None, classes: str) -> DatasetSplits:
    from tailprompt.data.registry import load_dataset
    from tailprompt.data.sampling import select_classes
    from tailprompt.protocols import with_template

    options = with_template(cfg.data, dataset, cfg.data.options if dataset == cfg.data.name else {})
    return select_classes(load_dataset(dataset, root if root is not None else cfg.data.root, options), classes)


def _metrics(cfg: RunConfig, learner: PromptLearner, ds: DatasetSplits) -> dict[str, Any]:
    from tailprompt.data.features import FeatureCache
    from tailprompt.engine.evaluate import split_outputs
    from tailprompt.engine.inputs import ImageInputs
    from tailprompt.metrics import split_metrics

    backbone = learner.backbone
    use_cache = cfg.data.cache and not learner.uses_image_tower
    cache = FeatureCache(cfg.data.cache_dir, cfg.data.num_workers) if use_cache else None
    inputs = ImageInputs(backbone, cache, backbone.device, cfg.data.batch_size_eval, cfg.data.num_workers)
    out = split_outputs(learner, ds, ds.test, inputs)
    return split_metrics(out.logits, out.labels, list(ds.classnames), n_bins=cfg.eval.ece_bins)
