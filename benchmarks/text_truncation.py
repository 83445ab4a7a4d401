"""Cut-length vs full-context text encoding (design §5: "the text tower is causal").

`FrozenVLM.encode_text_from_embeddings` cuts every batch of class prompts to its longest end-of-text position
before the transformer blocks; the tower is causal, so the EOT features are unchanged. This measures, in one
process on ViT-B-16 with random weights, K class prompts "a photo of a {name}." through the learners' path
(token embeddings in, features out):

- forward (no grad) for K = 10, 100, 1000;
- forward + backward to the prompt embeddings (CoOp training step) for K = 10, 100;

and prints JSON with the full-context and cut-length times (best of `--repeats` below K = 100), the
speed-up and the max absolute differences of the features (and gradients). Class names are synthetic 1-3
word names drawn with a fixed seed; datasets with longer names get a longer cut and a smaller speed-up.

    python benchmarks/text_truncation.py                 # the full run (~5 min on 2 CPU cores)
    python benchmarks/text_truncation.py --quick         # smoke run: small K, one repeat
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from tailprompt.backbone import FrozenVLM, load_backbone
from tailprompt.utils import configure_threads, write_json_atomic

TEMPLATE = "a photo of a {}."
_WORDS = (
    "red green small large striped spotted wild domestic golden northern river mountain sea house tree "
    "flower bird fish dog cat fox owl frog snake beetle moth shark whale horse lion tiger bear wolf deer "
    "car truck boat plane bicycle guitar piano clock lamp chair table bottle cup basket bridge tower castle "
    "garden forest desert island volcano canyon glacier orchid tulip daisy maple oak pine mushroom"
).split()


def class_names(k: int, seed: int = 0) -> list[str]:
    """`k` distinct synthetic class names of 1-3 words (fixed for a seed)."""
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < k:
        name = " ".join(rng.sample(_WORDS, rng.choice((1, 2, 2, 3))))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(min wall time over `repeats` calls of `fn`, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def forward_case(vlm: FrozenVLM, k: int, repeats: int) -> dict[str, Any]:
    tokens = vlm.tokenize([TEMPLATE.format(n) for n in class_names(k)])
    eot = vlm.eot_positions(tokens)
    with torch.no_grad():
        x = vlm.embed_tokens(tokens)
        full_s, full = best_time(lambda: vlm.encode_text_from_embeddings(x, eot, truncate=False), repeats)
        cut_s, cut = best_time(lambda: vlm.encode_text_from_embeddings(x, eot), repeats)
        reference = vlm.encode_text(tokens, truncate=False)  # open_clip's own encode_text
    return {
        "mode": "forward",
        "K": k,
        "cut_length": int(eot.max()) + 1,
        "full_s": full_s,
        "cut_s": cut_s,
        "speedup": full_s / cut_s,
        "max_abs_diff": float((cut - full).abs().max()),
        "max_abs_diff_vs_open_clip": float((cut - reference).abs().max()),
        "feature_scale": float(full.abs().max()),
    }


def backward_case(vlm: FrozenVLM, k: int, repeats: int) -> dict[str, Any]:
    tokens = vlm.tokenize([TEMPLATE.format(n) for n in class_names(k)])
    eot = vlm.eot_positions(tokens)
    base = vlm.embed_tokens(tokens).detach()
    target = torch.randn(k, vlm.embed_dim, generator=torch.Generator().manual_seed(0))

    def step(truncate: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = base.clone().requires_grad_(True)
        feats = vlm.encode_text_from_embeddings(x, eot, truncate=truncate)
        loss = (torch.nn.functional.normalize(feats, dim=-1) * target).sum()
        loss.backward()
        return feats.detach(), x.grad

    full_s, (full, g_full) = best_time(lambda: step(False), repeats)
    cut_s, (cut, g_cut) = best_time(lambda: step(True), repeats)
    return {
        "mode": "forward+backward",
        "K": k,
        "cut_length": int(eot.max()) + 1,
        "full_s": full_s,
        "cut_s": cut_s,
        "speedup": full_s / cut_s,
        "max_abs_diff": float((cut - full).abs().max()),
        "max_abs_grad_diff": float((g_cut - g_full).abs().max()),
        "grad_scale": float(g_full.abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (random weights)")
    parser.add_argument("--quick", action="store_true", help="smoke run: K = 10/50 forward, 10 backward")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: free cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    threads = configure_threads(args.threads)
    forward_ks, backward_ks = ([10, 50], [10]) if args.quick else ([10, 100, 1000], [10, 100])
    repeats = 1 if args.quick else args.repeats
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "random init" is the point here
        vlm = load_backbone(args.arch)
    build_s = time.perf_counter() - start
    forward_case(vlm, 4, 1)  # warm-up: allocator, kernels, tokenizer
    results = []
    # From K = 100 on a single timing takes seconds and is stable; repeating it would blow the ~5 min budget.
    for k in forward_ks:
        results.append(forward_case(vlm, k, repeats if k < 100 else 1))
    for k in backward_ks:
        results.append(backward_case(vlm, k, repeats if k < 100 else 1))
    report = {
        "benchmark": "text_truncation",
        "backbone": vlm.identity,
        "context_length": vlm.context_length,
        "template": TEMPLATE,
        "threads": threads,
        "repeats": repeats,
        "torch": torch.__version__,
        "build_s": build_s,
        "total_s": time.perf_counter() - start,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
