"""CoCoOp: one text-tower call over B*K prompts vs the reference's loop over images.

CoCoOp conditions the context on each image, so every image needs its own K class prompts. The
reference loops over the batch and encodes K prompts per image; `CoCoOp.text_features` builds all
B*K prompts and encodes them in one call (chunked by `max_sequences_per_call`). This times both in one
process on random weights and checks they agree (max abs difference of the normalised features).

    python benchmarks/cocoop_batching.py                       # tiny-vit, B=32, K=10
    python benchmarks/cocoop_batching.py --backbone ViT-B-16 --batch 8 --classes 10

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tailprompt.backbone import load_backbone
from tailprompt.prompts import LEARNERS
from tailprompt.utils import configure_threads


def best_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny-vit")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    warnings.simplefilter("ignore")
    backbone = load_backbone(args.backbone)
    spec = LEARNERS.get("cocoop")
    names = [f"class number {i}" for i in range(args.classes)]
    torch.manual_seed(0)
    learner = spec.build(spec.config_cls(), backbone, names, "a photo of a {}.")
    feats = F.normalize(torch.randn(args.batch, backbone.embed_dim), dim=-1)

    def per_image_loop() -> torch.Tensor:  # the reference: K prompts per image, one call each
        return torch.cat([learner.text_features(f[None]) for f in feats])

    with torch.no_grad():
        loop_s, loop_out = best_time(per_image_loop, args.repeats)
        batched_s, batched_out = best_time(lambda: learner.text_features(feats), args.repeats)
    print(json.dumps({
        "benchmark": "cocoop_batching",
        "backbone": args.backbone,
        "threads": threads,
        "batch": args.batch,
        "classes": args.classes,
        "loop_s": round(loop_s, 4),
        "batched_s": round(batched_s, 4),
        "speedup": round(loop_s / batched_s, 2),
        "max_abs_diff": float((loop_out - batched_out).abs().max()),
    }, indent=2))


if __name__ == "__main__":
    main()
