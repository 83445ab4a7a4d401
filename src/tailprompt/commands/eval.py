"""`tailprompt eval`: evaluate a finished run's prompts on another dataset or label set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tailprompt.cli import user_errors


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="re-evaluate a run's saved prompts on a dataset",
        description="Load runs/<id>/prompts.safetensors, rebuild the class-name buffers for DATASET "
        "(only the prompt parameters transfer, as in the reference code), evaluate its test split, "
        "print the metrics and save them as runs/<id>/eval_<dataset>_<classes>.json.",
    )
    p.add_argument("--run", required=True, help="a run directory (holding config.yaml and prompts.safetensors)")
    p.add_argument("--dataset", required=True, help="dataset name (see `tailprompt list datasets`)")
    p.add_argument("--root", default=None, help="folder holding the dataset folders (default: the run's data.root)")
    p.add_argument("--classes", default="all", choices=["all", "base", "new"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with user_errors():
        metrics = evaluate_run(Path(args.run), args.dataset, args.root, args.classes)
    long_fields = ("per_class_accuracy", "reliability", "classnames")  # kept in the saved JSON only
    print(json.dumps({k: v for k, v in metrics.items() if k not in long_fields}, indent=2))
    return 0


def evaluate_run(run_dir: Path, dataset: str, root: str | None, classes: str) -> dict:
    from safetensors import safe_open

    from tailprompt.config import from_dict, load_yaml
    from tailprompt.data.features import FeatureCache
    from tailprompt.data.registry import load_dataset
    from tailprompt.data.sampling import select_classes
    from tailprompt.engine.config import RunConfig
    from tailprompt.engine.evaluate import split_outputs
    from tailprompt.engine.inputs import ImageInputs
    from tailprompt.engine.protocols import with_template
    from tailprompt.engine.run import BackboneCache, initial_prompts
    from tailprompt.metrics import split_metrics
    from tailprompt.prompts import build_learner
    from tailprompt.utils import configure_threads, write_json_atomic

    prompts_file = run_dir / "prompts.safetensors"
    if not prompts_file.is_file():
        raise FileNotFoundError(f"{prompts_file}: not found; is {run_dir} a complete run directory?")
    cfg = from_dict(RunConfig, load_yaml(run_dir / "config.yaml"))
    configure_threads()
    backbone = BackboneCache().get(cfg.backbone)
    with safe_open(str(prompts_file), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("backbone_identity") not in (None, backbone.identity):
        raise ValueError(f"{prompts_file}: prompts were trained on backbone {meta['backbone_identity']}, "
                         f"but {cfg.backbone.name} now loads as {backbone.identity}")
    root = root if root is not None else cfg.data.root
    options = with_template(cfg.data, dataset, cfg.data.options if dataset == cfg.data.name else {})
    ds = select_classes(load_dataset(dataset, root, options), classes)
    learner = build_learner(cfg.learner.name, cfg.learner.options, backbone, list(ds.classnames), ds.template)
    if cfg.init.from_run:  # a second stage (DPC) keeps the first stage's prompts: reload them, as training did
        learner.load_initial_state(initial_prompts(cfg, backbone, learner))
    learner.load_prompt_state(state)
    # Learners that infer differently on label spaces they were not trained on (DPC's mixing) need to know.
    trained_classes = "base" if cfg.protocol.name == "base_to_new" else "all"
    seen = dataset == cfg.data.name and classes == trained_classes
    learner.set_classnames(list(ds.classnames), ds.template, seen=seen)
    use_cache = cfg.data.cache and not learner.uses_image_tower
    cache = FeatureCache(cfg.data.cache_dir, cfg.data.num_workers) if use_cache else None
    inputs = ImageInputs(backbone, cache, backbone.device, cfg.data.batch_size_eval, cfg.data.num_workers)
    out = split_outputs(learner, ds, ds.test, inputs)
    metrics = {"dataset": dataset, "classes": classes,
               **split_metrics(out.logits, out.labels, list(ds.classnames), n_bins=cfg.eval.ece_bins)}
    write_json_atomic(run_dir / f"eval_{dataset}_{classes}.json", metrics)
    return metrics
