"""bf16 autocast vs fp32 on the frozen towers: speed, and what it does to features and logits (design §8).

On a random ViT-B/16 with QuickGELU (the OpenAI layout), in one process:

* image tower: B preprocessed images (EuroSAT-like generated pictures), forward, fp32 vs bf16;
* text tower: CoOp prompts (M = 16 random context vectors + K class names), forward + backward to the
  context, fp32 vs bf16, each with the shared-prefix pass the learners use;
* deviations of bf16 from fp32: max abs difference of the normalised image and text features, max cosine
  deviation, max abs difference of the logits `100 * cos` (CLIP's scale), and top-1 agreement.

    python benchmarks/precision.py                      # ViT-B-16, B = 16, K = 10
    python benchmarks/precision.py --arch tiny-vit      # quick check of the script

Prints one JSON object. `auto` resolves to bf16 only where the CPU multiplies bf16 natively (amx_bf16 /
avx512_bf16 in /proc/cpuinfo) or on CUDA; this script forces both precisions to compare them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from tailprompt.backbone import load_backbone
from tailprompt.backbone.precision import autocast_context, cpu_has_native_bf16
from tailprompt.data.registry import load_dataset
from tailprompt.testing.trees import make_eurosat_tree


def unit(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """(min seconds over `repeats` calls after one warm-up call, the last result)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def images_of(vlm: Any, n: int) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset("eurosat", make_eurosat_tree(Path(tmp), images_per_class=max(10, n // 10 + 1)))
        return ds.load_batch(ds.test[:n] if len(ds.test) >= n else ds.train[:n], vlm.preprocess_eval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from tailprompt.utils import configure_threads

    threads = configure_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vlm = load_backbone(args.arch, device=device, quick_gelu=True, precision="fp32")
    images = images_of(vlm, args.images).to(device)
    k, m = args.classes, args.n_ctx
    tokens = vlm.tokenize([" ".join(["X"] * m) + f" synthetic class {i}." for i in range(k)])
    eot = vlm.eot_positions(tokens)
    base = vlm.embed_tokens(tokens)[:, : int(eot.max()) + 1].detach()
    ctx = (0.02 * torch.randn(m, vlm.text_width, generator=torch.Generator().manual_seed(0))).to(device)
    ctx.requires_grad_(True)

    def image_pass(precision: str) -> torch.Tensor:
        with torch.no_grad(), autocast_context(device, precision):
            return unit(vlm.encode_image(images))

    def text_pass(precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.grad = None
        x = torch.cat([base[:, :1], ctx.unsqueeze(0).expand(k, -1, -1), base[:, 1 + m :]], dim=1)
        with autocast_context(device, precision):
            feats = vlm.encode_text_from_embeddings(x, eot, shared_prefix=1 + m)
        feats = unit(feats)
        feats.sum().backward()
        return feats.detach(), ctx.grad.detach().clone()

    report: dict[str, Any] = {"arch": args.arch, "device": device, "threads": threads,
                              "cpu_native_bf16": cpu_has_native_bf16(), "images": args.images,
                              "classes": k, "n_ctx": m}
    outs = {}
    for precision in ("fp32", "bf16"):
        t_img, img = timed(lambda p=precision: image_pass(p), args.repeats)
        t_txt, (txt, grad) = timed(lambda p=precision: text_pass(p), args.repeats)
        outs[precision] = (img, txt, grad)
        report[precision] = {"image_forward_s": round(t_img, 4), "text_forward_backward_s": round(t_txt, 4)}
    report["image_speedup"] = round(report["fp32"]["image_forward_s"] / report["bf16"]["image_forward_s"], 2)
    report["text_speedup"] = round(
        report["fp32"]["text_forward_backward_s"] / report["bf16"]["text_forward_backward_s"], 2
    )
    (img32, txt32, grad32), (img16, txt16, grad16) = outs["fp32"], outs["bf16"]
    logits32, logits16 = 100 * img32 @ txt32.T, 100 * img16 @ txt16.T
    report["deviation"] = {
        "image_feature_max_abs": float((img16 - img32).abs().max()),
        "image_cosine_max": float((1 - (img16 * img32).sum(-1)).max()),
        "text_feature_max_abs": float((txt16 - txt32).abs().max()),
        "text_cosine_max": float((1 - (txt16 * txt32).sum(-1)).max()),
        "logits_max_abs": float((logits16 - logits32).abs().max()),
        "logits_range_fp32": float(logits32.max() - logits32.min()),
        "top1_agreement": float((logits16.argmax(-1) == logits32.argmax(-1)).float().mean()),
        "context_grad_max_abs_rel": float((grad16 - grad32).abs().max() / grad32.abs().max()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
