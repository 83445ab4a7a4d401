"""Full runs end to end through the CLI, and the text tower alone against the token positions it must run.

Writes a seeded random ViT-B/16 checkpoint in OpenAI's plain state-dict layout (fp16 weights + the integer
entries, so it loads with QuickGELU as a real OpenAI file does) and a 10-class EuroSAT tree in the CoOp
layout, then runs each preset through `tailprompt train` in its own process with a fresh feature cache:

    coop_fewshot  all classes, 16 shots, 200 epochs        (CoOp few-shot)
    kgcoop        base-to-new, 100 epochs, batch 128        (KgCoOp)
    cocoop        base-to-new, 10 epochs, batch 1           (CoCoOp)
    maple         base-to-new, 5 epochs, batch 4            (MaPLe)

For each: wall time of the process and of its phases (features, train, eval, from result.json), seconds per
training step, peak RSS of the process, precision and threads. Then the text tower alone, forward + backward
of CoOp prompts (M context vectors + K class names) per step, plain vs shared prefix, with the token
positions each must run (K * L vs P + the sum of the K tails up to their end-of-text tokens): the positions
ratio is the speed-up a cost linear in positions would give. The text rows run twice by default: with
`synthetic class i` names (one length, the issue's setting) and with ImageNet's names (real, varied lengths,
where running each tail only to its end pays); `--text-names imagenet` keeps one kind.

    python benchmarks/full_run.py                                       # everything, real size
    python benchmarks/full_run.py --presets coop_fewshot --text-k 10 100
    python benchmarks/full_run.py --set optim.epochs=2 --images-per-class 20 --text-k 10   # reduced
    python benchmarks/full_run.py --arch tiny-vit --images-per-class 20 --set optim.max_steps=2  # smoke

Runs on CUDA when available (`backbone.device=auto`). Prints one JSON object; --out keeps the files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from tailprompt.backbone import load_backbone
from tailprompt.backbone.architectures import architecture, build_model
from tailprompt.backbone.precision import autocast_context
from tailprompt.engine.train import batches_per_epoch
from tailprompt.testing.trees import make_eurosat_tree

PRESETS = ("coop_fewshot", "kgcoop", "cocoop", "maple")


def write_openai_checkpoint(path: Path, arch: str, seed: int) -> Path:
    """A random `arch` CLIP saved as OpenAI's plain state dict: fp16 matmul weights, fp32 norms/embeddings."""
    from open_clip.model import convert_weights_to_lp

    model = build_model(architecture(arch), quick_gelu=True, seed=seed).eval()
    convert_weights_to_lp(model, torch.float16)
    sd: dict[str, Any] = dict(model.state_dict())
    sd["input_resolution"] = torch.tensor(model.visual.image_size[0])
    sd["context_length"] = torch.tensor(model.context_length)
    sd["vocab_size"] = torch.tensor(model.vocab_size)
    torch.save(sd, path)
    return path


def run_preset(preset: str, overrides: list[str], env: dict[str, str], logs: Path) -> dict[str, Any]:
    """One `tailprompt train` process: its wall time, peak RSS and the phase timings it recorded."""
    argv = [sys.executable, "-m", "tailprompt", "train", "--config", preset]
    for o in overrides:
        argv += ["--set", o]
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{preset}.out", logs / f"{preset}.err"
    t0 = time.perf_counter()
    with out_path.open("w") as stdout, err_path.open("w") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{preset} failed:\n{err_path.read_text()[-3000:]}")
    text = out_path.read_text()
    summary = json.loads(text[text.index("{") :])
    result = json.loads((Path(summary["run_dir"]) / "result.json").read_text())
    optim = result["config"]["optim"]
    n_train = sum(result["sampling"]["counts"].values())
    steps = optim["epochs"] * batches_per_epoch(n_train, optim["batch_size"])
    if optim.get("max_steps") is not None:
        steps = min(steps, optim["max_steps"])
    t = result["timings"]
    return {
        "wall_s": round(wall, 1),
        "features_s": round(t["features_s"], 1),
        "train_s": round(t["train_s"], 1),
        "eval_s": round(t["eval_s"], 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # Linux reports KiB
        "steps": steps,
        "s_per_step": round(t["train_s"] / max(1, steps), 4),
        "train_images": n_train,
        "precision": result["backbone"].get("precision"),
        "device": result["device"],
        "accuracy": {k: round(v["accuracy"], 2) for k, v in result["splits"].items()},
    }


def matmul_rate(dtype: torch.dtype, device: str, rows: int = 800, width: int = 768, repeats: int = 20) -> float:
    """Measured GFLOP/s of one ``[rows, W] @ [W, 4W]`` product (ViT-B/16's MLP shape) in `dtype`."""
    a = torch.randn(rows, width, dtype=dtype, device=device)
    b = torch.randn(width, 4 * width, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * rows * width * 4 * width * repeats / (time.perf_counter() - t0) / 1e9


def vit_step_gflop(vlm: Any, batch: int, prompts: int) -> float:
    """Matrix-product GFLOP of one prompted ViT forward + input-gradient backward (MaPLe's image side).

    Per block and token: q|k|v 3W^2, output W^2, MLP 8W^2 multiply-adds; the last block runs k|v for every
    token and the rest for the class token alone (as `FrozenVLM` does); the backward to the inputs costs
    the forward again (frozen weights: no weight gradients).
    """
    v = vlm.model.visual
    w, layers = vlm.vision_width, vlm.vision_layers
    grid = v.grid_size[0] * v.grid_size[1]
    tokens = 1 + grid + prompts
    block = 12 * w * w * tokens
    last = 2 * w * w * tokens + 10 * w * w
    forward = 2 * batch * ((layers - 1) * block + last)
    return 2 * forward / 1e9


def class_names(kind: str, k: int) -> list[str]:
    """K class names: ImageNet's (open_clip's list, cycled past 1,000), whose token lengths vary as real
    names do, or `synthetic class i` (all about the same length)."""
    if kind == "synthetic":
        return [f"synthetic class {i}" for i in range(k)]
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return [IMAGENET_CLASSNAMES[i % len(IMAGENET_CLASSNAMES)] for i in range(k)]


def text_tower_row(vlm: Any, k: int, m: int, repeats: int, names_kind: str = "imagenet") -> dict[str, Any]:
    """CoOp prompts `[SOS][ctx_1..ctx_M][name_k][.][EOS]`, forward + backward to the context, plain vs shared."""
    names = class_names(names_kind, k)
    tokens = vlm.tokenize([" ".join(["X"] * m) + f" {n}." for n in names])
    eot = vlm.eot_positions(tokens)
    length = int(eot.max()) + 1
    base = vlm.embed_tokens(tokens)[:, :length].detach()
    ctx = (0.02 * torch.randn(m, vlm.text_width, device=vlm.device)).requires_grad_(True)
    prefix = 1 + m
    row: dict[str, Any] = {"K": k, "M": m, "L": length, "names": names_kind}
    feats = {}
    for label, shared in (("plain", 0), ("shared", prefix)):
        times = []
        for _ in range(repeats + 1):  # the first call warms up
            ctx.grad = None
            if vlm.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x = torch.cat([base[:, :1], ctx.unsqueeze(0).expand(k, -1, -1), base[:, prefix:]], dim=1)
            with autocast_context(vlm.device, vlm.precision):
                out = vlm.encode_text_from_embeddings(x, eot, shared_prefix=shared)
            out = out.float()
            (out / out.norm(dim=-1, keepdim=True)).sum().backward()
            if vlm.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        feats[label] = (out.detach(), ctx.grad.detach().clone())
        row[f"{label}_s"] = round(min(times[1:]), 4)
    row["positions_plain"] = k * length
    row["positions_shared"] = prefix + int((eot - prefix + 1).sum())  # each tail up to its end-of-text token
    row["speedup"] = round(row["plain_s"] / row["shared_s"], 2)
    row["positions_ratio"] = round(row["positions_plain"] / row["positions_shared"], 2)
    # relative to the plain path's largest entry (features are not normalised; bf16 rounds at ~4e-3)
    for name, i in (("feature", 0), ("grad", 1)):
        plain, shared = feats["plain"][i], feats["shared"][i]
        row[f"max_rel_{name}_diff"] = float((plain - shared).abs().max() / plain.abs().max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip architecture of the random checkpoint")
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), help="presets to run (none: skip runs)")
    parser.add_argument("--images-per-class", type=int, default=64)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every run (e.g. optim.epochs=2 for a reduced run)")
    parser.add_argument("--shared-cache", action="store_true",
                        help="one feature cache for all presets (default: a fresh cache per preset)")
    parser.add_argument("--text-k", type=int, nargs="*", default=[10, 100, 1000], help="classes K of the text rows")
    parser.add_argument("--text-m", type=int, nargs="*", default=[4, 16], help="context lengths M of the text rows")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per text row (min is reported)")
    parser.add_argument("--text-names", nargs="*", choices=["synthetic", "imagenet"], default=["synthetic", "imagenet"],
                        help="class names of the text rows: synthetic (one length) and/or ImageNet's (varied)")
    parser.add_argument("--out", type=Path, default=None, help="keep checkpoint, data, caches and runs here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from tailprompt.utils import configure_threads

    threads = configure_threads(args.threads)
    tmp = tempfile.TemporaryDirectory() if args.out is None else None
    out = Path(tmp.name) if tmp is not None else args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "arch": args.arch,
        "threads": threads,
        "precision_setting": args.precision,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_1min": os.getloadavg()[0],
        "images_per_class": args.images_per_class,
        "overrides": args.overrides,
    }
    t0 = time.perf_counter()
    ckpt = write_openai_checkpoint(out / f"{args.arch}.random-openai.pt", args.arch, seed=0)
    root = make_eurosat_tree(out / "data", images_per_class=args.images_per_class)
    report["setup_s"] = round(time.perf_counter() - t0, 1)

    env = {**os.environ, "TAILPROMPT_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    runs: dict[str, Any] = {}
    for preset in args.presets:
        cache = out / "cache" / ("shared" if args.shared_cache else preset)
        overrides = [
            f"backbone.name={args.arch}", f"backbone.weights={ckpt}", f"backbone.precision={args.precision}",
            "data.name=eurosat", f"data.root={root}", "data.shots=16", f"data.cache_dir={cache}",
            f"output_dir={out / 'runs'}", *args.overrides,
        ]
        runs[preset] = run_preset(preset, overrides, env, out / "logs")
        print(f"{preset}: {json.dumps(runs[preset])}", file=sys.stderr)
    report["runs"] = runs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rates = {name: round(matmul_rate(dt, device), 1) for name, dt in dtypes.items()}
    report["matmul_gflops"] = rates
    vlm = load_backbone(args.arch, weights=ckpt, device=device, precision=args.precision)
    if "maple" in args.presets:  # MaPLe's step cannot beat its image side's products at the measured rate
        gflop = vit_step_gflop(vlm, batch=4, prompts=2)
        rate = rates[vlm.precision]
        report["maple_image_side"] = {"gflop_per_step": round(gflop, 1), "floor_s_per_step": round(gflop / rate, 3)}
    if args.text_k and args.text_m:
        rows = []
        for names in args.text_names:
            for m in args.text_m:
                for k in args.text_k:
                    rows.append(text_tower_row(vlm, k, m, args.repeats, names))
                    print(f"text: {json.dumps(rows[-1])}", file=sys.stderr)
        report["text_tower"] = {"precision": vlm.precision, "device": device, "rows": rows}
    print(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
