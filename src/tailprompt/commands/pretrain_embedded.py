"""`tailprompt pretrain-embedded`: rebuild the shipped tiny CLIP by contrastive pretraining on the world."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from tailprompt.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from tailprompt.world.pretrain import DEFAULT_WEIGHTS, PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain-embedded",
        help="pretrain the embedded tiny CLIP on the procedural world (rebuilds the shipped weights)",
        description="Train the embedded CLIP contrastively on rendered world images and their captions, then "
        "write the weights (fp16 safetensors) to --out and config.json, vocabulary.txt and MANIFEST.md "
        "(command, seed, steps, wall time, zero-shot table) next to it. The default --out replaces the "
        "weights shipped inside the package, which `load_backbone(\"embedded\")` reads.",
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimisation steps (default {d.steps})")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS,
                   help="weights file to write (default: the packaged one)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of initialisation and data (default {d.seed})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"linear warm-up steps (default {d.warmup})")
    p.add_argument("--eval-per-class", type=int, default=d.eval_per_class,
                   help="test images per class for the zero-shot table in MANIFEST.md, 0 to skip "
                   f"(default {d.eval_per_class})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--rescore", action="store_true",
                   help="do not train: re-measure the zero-shot table of the weights at --out and rewrite that "
                   "section of MANIFEST.md (after a renderer change that leaves the pretraining data alone)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tailprompt.schema import ConfigError, from_dict
    from tailprompt.utils import configure_threads
    from tailprompt.world.pretrain import PretrainConfig, pretrain, rescore, save_embedded, summary

    if args.out.suffix != ".safetensors":
        raise UserError(f"--out {args.out}: expected a .safetensors file path")
    if args.out.exists() and args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder, expected a .safetensors file path")
    if args.rescore:
        if not args.out.is_file():
            raise UserError(f"--rescore: no weights at {args.out} (train them first)")
        if args.eval_per_class < 1:
            raise UserError(f"--rescore needs --eval-per-class >= 1, got {args.eval_per_class}")
        configure_threads(args.threads)
        table = rescore(args.out, args.eval_per_class)
        print(json.dumps({"weights": str(args.out), "zero_shot": table}, indent=2))
        return 0
    try:
        cfg = from_dict(PretrainConfig, {
            "steps": args.steps, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
            "warmup": args.warmup, "eval_per_class": args.eval_per_class,
        })
    except ConfigError as e:
        raise UserError(str(e)) from e
    threads = configure_threads(args.threads)
    result = pretrain(cfg, progress=not args.no_progress)
    command = "tailprompt pretrain-embedded " + " ".join(
        shlex.quote(a) for a in [
            "--steps", str(cfg.steps), "--seed", str(cfg.seed), "--batch-size", str(cfg.batch_size),
            "--lr", str(cfg.lr), "--warmup", str(cfg.warmup), "--eval-per-class", str(cfg.eval_per_class),
            "--threads", str(threads),
        ]
    )
    out = save_embedded(result, cfg, args.out, command, threads)
    print(json.dumps({"weights": str(out), **summary(result)}, indent=2))
    return 0
