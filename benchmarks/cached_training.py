"""Training from cached image features vs running the frozen image tower every step (design §5).

For learners whose image tower is frozen (CoOp, KgCoOp, CoCoOp and objectives built on them), the engine
encodes each (image, view) once into the on-disk feature cache and trains from it. This measures, in one
process, one CoOp training epoch (a) the exact way (load + augment + encode every batch, as the reference
code does) and (b) from the cache, plus the one-off cost of filling the cache, and checks exactness: the
cached eval-view features must equal a direct `encode_image` of the same preprocessed images.

    python benchmarks/cached_training.py                         # tiny-vit, a generated EuroSAT tree
    python benchmarks/cached_training.py --backbone ViT-B-16     # 224 px, random weights (slow on CPU)

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from tailprompt.backbone import load_backbone
from tailprompt.data.features import FeatureCache
from tailprompt.data.registry import load_dataset
from tailprompt.data.sampling import sample_training_set, select_classes
from tailprompt.engine.inputs import ImageInputs
from tailprompt.engine.loss import BoundObjective
from tailprompt.engine.run_config import OptimConfig
from tailprompt.engine.train import TrainSetup, train_prompts
from tailprompt.objectives import OBJECTIVES, ObjectiveContext
from tailprompt.prompts import LEARNERS, build_learner
from tailprompt.prompts.common import template_text_features
from tailprompt.testing.trees import make_eurosat_tree
from tailprompt.utils import configure_threads


def one_epoch(setup: TrainSetup) -> float:
    t0 = time.perf_counter()
    train_prompts(setup)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny-vit")
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    warnings.simplefilter("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = load_backbone(args.backbone, device=str(device))
    with tempfile.TemporaryDirectory() as tmp:
        root = make_eurosat_tree(Path(tmp) / "data", images_per_class=args.images_per_class)
        ds = select_classes(load_dataset("eurosat", root), "all")
        training = sample_training_set(ds, 16, 1.0, seed=1)
        ce = OBJECTIVES.get("cross_entropy")
        frozen = template_text_features(backbone, list(ds.classnames), [ds.template])
        context = ObjectiveContext(frozen, list(ds.classnames), backbone)
        objectives = [BoundObjective("cross_entropy", ce.make(ce.config_cls(), context), dict(ce.default_weights))]
        optim = OptimConfig(epochs=1, warmup_epochs=0, batch_size=32)

        def setup(inputs: ImageInputs, views: torch.Tensor | None) -> TrainSetup:
            torch.manual_seed(0)
            config = LEARNERS.get("coop").config_cls()
            learner = build_learner("coop", config, backbone, list(ds.classnames), ds.template)
            return TrainSetup(learner, objectives, frozen, None, ds, training.items, inputs, views, optim, 1)

        exact_inputs = ImageInputs(backbone, None, device)
        exact_s = one_epoch(setup(exact_inputs, None))

        cache = FeatureCache(Path(tmp) / "cache")
        cached_inputs = ImageInputs(backbone, cache, device)
        t0 = time.perf_counter()
        views = cached_inputs.train_views(ds, training.items, args.views)
        cached_inputs.features(ds, training.items, view=0)
        fill_s = time.perf_counter() - t0
        cached_s = one_epoch(setup(cached_inputs, views))

        direct = exact_inputs.features(ds, training.items, view=0)
        cached = cached_inputs.features(ds, training.items, view=0)
        max_diff = float((direct - cached).abs().max())
        hits_before = cache.hits
        cached_inputs.train_views(ds, training.items, args.views)
        assert cache.hits > hits_before
    print(json.dumps({
        "benchmark": "cached_training",
        "backbone": args.backbone,
        "device": str(device),
        "threads": threads,
        "train_images": len(training.items),
        "views": args.views,
        "epoch_exact_s": round(exact_s, 4),
        "epoch_cached_s": round(cached_s, 4),
        "speedup": round(exact_s / cached_s, 2),
        "cache_fill_s": round(fill_s, 4),
        "eval_view_max_abs_diff": max_diff,
    }, indent=2))


if __name__ == "__main__":
    main()
