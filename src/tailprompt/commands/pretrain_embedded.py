"""`tailprompt pretrain-embedded`: rebuild a shipped tiny CLIP: the conv one by contrastive pretraining on the
world, the ViT one (`--vision vit`) by distilling the conv one's image tower."""

from __future__ import annotations

import argparse
import json
import shlex
import typing
from pathlib import Path

from tailprompt.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from tailprompt.world.pretrain import Vision, default_config

    conv, vit = default_config("conv"), default_config("vit")

    def both(field: str) -> str:
        return f"default {getattr(conv, field)} conv, {getattr(vit, field)} vit"

    p = sub.add_parser(
        "pretrain-embedded",
        help="pretrain the embedded tiny CLIP (or, --vision vit, its distilled ViT twin) on the procedural world "
        "(rebuilds the shipped weights)",
        description="--vision conv (default): train the embedded CLIP contrastively on rendered world images and "
        "their captions. --vision vit: train the `embedded-vit` image tower (a small ViT, 32 px, patch 4) by "
        "feature distillation from the embedded CLIP's conv image tower (frozen teacher, read from --teacher) "
        "on the same rendered pretraining scenes; its text tower and temperature are copied unchanged from the "
        "teacher, so both backbones share the joint embedding space and the class prompts. Either way, write "
        "the weights (fp16 safetensors) to --out and config.json, vocabulary.txt and MANIFEST.md (command, "
        "seed, steps, wall time, zero-shot table) next to it. The default --out replaces the weights shipped "
        "inside the package, which `load_backbone(\"embedded\")` / `load_backbone(\"embedded-vit\")` read.",
    )
    p.add_argument("--vision", choices=typing.get_args(Vision), default="conv",
                   help="which model: conv = the embedded CLIP, vit = the distilled embedded-vit (default conv)")
    p.add_argument("--steps", type=int, default=None, help=f"optimisation steps ({both('steps')})")
    p.add_argument("--out", type=Path, default=None,
                   help="weights file to write (default: the packaged one of --vision)")
    p.add_argument("--seed", type=int, default=conv.seed,
                   help=f"seed of initialisation and data (default {conv.seed})")
    p.add_argument("--batch-size", type=int, default=None, help=both("batch_size"))
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate ({both('lr')})")
    p.add_argument("--warmup", type=int, default=None, help=f"linear warm-up steps ({both('warmup')})")
    p.add_argument("--text-weight", type=float, default=None,
                   help="vit only: weight of the contrastive loss against the frozen text tower added to the "
                   f"distillation loss (default {vit.text_weight})")
    p.add_argument("--augment-fraction", type=float, default=None,
                   help="vit only: share of each batch distilled on the world's training view (crop + flip) "
                   f"instead of the whole scene (default {vit.augment_fraction})")
    p.add_argument("--noisy-fraction", type=float, default=None,
                   help="vit only: share of each batch given the world's noisy style's pixel noise "
                   f"(default {vit.noisy_fraction})")
    p.add_argument("--teacher", type=Path, default=None,
                   help="vit only: the embedded CLIP weights to distil from and copy the text tower of "
                   "(default: the packaged ones)")
    p.add_argument("--eval-per-class", type=int, default=conv.eval_per_class,
                   help="test images per class for the zero-shot table in MANIFEST.md, 0 to skip "
                   f"(default {conv.eval_per_class})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--rescore", action="store_true",
                   help="do not train: re-measure the zero-shot table of the weights at --out and rewrite that "
                   "section of MANIFEST.md (after a renderer change that leaves the pretraining data alone)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tailprompt.backbone.architectures import embedded_weights_path
    from tailprompt.schema import ConfigError, from_dict, to_dict
    from tailprompt.utils import configure_threads
    from tailprompt.world.pretrain import backbone_name, default_config, rescore

    vision = args.vision
    out: Path = args.out if args.out is not None else embedded_weights_path(backbone_name(vision))
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: expected a .safetensors file path")
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out}: is a folder, expected a .safetensors file path")
    if vision == "conv" and any(v is not None for v in (args.text_weight, args.teacher, args.augment_fraction,
                                               args.noisy_fraction)):
        raise UserError("--text-weight, --augment-fraction, --noisy-fraction and --teacher apply to --vision vit only")
    if args.rescore:
        if not out.is_file():
            raise UserError(f"--rescore: no weights at {out} (train them first)")
        if args.eval_per_class < 1:
            raise UserError(f"--rescore needs --eval-per-class >= 1, got {args.eval_per_class}")
        configure_threads(args.threads)
        table = rescore(out, args.eval_per_class, vision)
        print(json.dumps({"weights": str(out), "zero_shot": table}, indent=2))
        return 0
    given = {
        "steps": args.steps, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
        "warmup": args.warmup, "eval_per_class": args.eval_per_class, "text_weight": args.text_weight,
        "augment_fraction": args.augment_fraction, "noisy_fraction": args.noisy_fraction,
    }
    try:
        cfg = from_dict(type(default_config(vision)), {
            **to_dict(default_config(vision)), **{k: v for k, v in given.items() if v is not None}
        })
    except ConfigError as e:
        raise UserError(str(e)) from e
    teacher_path = args.teacher if args.teacher is not None else embedded_weights_path("embedded")
    if vision == "vit" and not teacher_path.is_file():
        raise UserError(f"--teacher {teacher_path}: no such weights file (the embedded CLIP to distil from)")
    from tailprompt.files import check_output_file

    check_output_file(out, "--out")  # before the pretraining, not after it
    threads = configure_threads(args.threads)
    flags = ["--steps", str(cfg.steps), "--seed", str(cfg.seed), "--batch-size", str(cfg.batch_size),
             "--lr", str(cfg.lr), "--warmup", str(cfg.warmup)]
    if vision == "vit":
        flags = ["--vision", "vit", *flags, "--text-weight", str(cfg.text_weight),
                 "--augment-fraction", str(cfg.augment_fraction), "--noisy-fraction", str(cfg.noisy_fraction)]
    flags += ["--eval-per-class", str(cfg.eval_per_class), "--threads", str(threads)]
    command = "tailprompt pretrain-embedded " + " ".join(shlex.quote(a) for a in flags)
    if vision == "vit":
        from tailprompt.backbone import load_backbone
        from tailprompt.world.distill import distill, save_embedded_vit
        from tailprompt.world.pretrain import summary

        teacher = load_backbone("embedded", weights=teacher_path, precision="fp32")
        result = distill(cfg, teacher, progress=not args.no_progress)
        written = save_embedded_vit(result, cfg, out, command, threads, teacher)
    else:
        from tailprompt.world.pretrain import pretrain, save_embedded, summary

        result = pretrain(cfg, progress=not args.no_progress)
        written = save_embedded(result, cfg, out, command, threads)
    print(json.dumps({"weights": str(written), **summary(result)}, indent=2))
    return 0
