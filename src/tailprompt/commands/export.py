"""`tailprompt export`: one self-describing safetensors file of a run's prompts, loadable without tailprompt."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tailprompt.cli import user_errors

EXPORT_FORMAT = "tailprompt-export-1"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's prompts as one self-describing .safetensors file (docs/export.md loads it in open_clip)",
        description="Write the run's learned prompt tensors (reference names) and, for learners whose text "
        "features do not depend on the image, the training classes' text features, with metadata "
        "(`tailprompt` key, JSON): learner name and config, backbone name, weights identity and open_clip model "
        "config, tokenizer, class names, prompt texts, template, preprocessing, tailprompt version. "
        "docs/export.md has the ~20-line recipe that loads it into plain open_clip for inference.",
    )
    p.add_argument("--run", required=True, help="a finished run folder (OUTPUT_DIR/<run_id>/)")
    p.add_argument("--out", required=True, help="the file to write (.safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with user_errors():
        out = Path(args.out)
        info = export_run(Path(args.run), out)
    print(json.dumps({"out": str(out), "learner": info["learner"]["name"], "classes": len(info["classnames"]),
                      "tensors": info["tensors"], "open_clip_recipe": info["open_clip_recipe"]}, indent=2))
    return 0


def export_run(run_dir: Path, out: Path) -> dict[str, Any]:
    """Write the export file; returns its metadata (the JSON under the `tailprompt` key)."""
    import torch

    import tailprompt
    from tailprompt.engine.saved import open_run, run_backbone, run_learner
    from tailprompt.files import check_output_file
    from tailprompt.prompts.common import clean_classnames
    from tailprompt.schema import to_dict
    from tailprompt.utils import write_safetensors_atomic

    check_output_file(out, "--out", (".safetensors",))
    saved = open_run(run_dir)
    backbone = run_backbone(saved, "cpu")
    learner = run_learner(saved, backbone)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in learner.prompt_state().items()}
    if not learner.instance_conditioned:
        with torch.no_grad():
            tensors["text_features"] = learner.text_features(None).float().cpu().contiguous()
    names = clean_classnames(saved.classnames)
    prefix = getattr(learner, "prompt_prefix", None)
    info: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "tailprompt_version": tailprompt.__version__,
        "run_id": saved.run_dir.name,
        "learner": {"name": saved.config.learner.name, "config": to_dict(saved.config.learner)},
        "backbone": {
            "name": saved.config.backbone.name,
            "identity": backbone.identity,  # architecture + sha256 of the weights file (or the open_clip tag)
            "model_config": model_config(backbone),
            "logit_scale": backbone.logit_scale,
        },
        "tokenizer": {"kind": "open_clip SimpleTokenizer (CLIP BPE)", "context_length": backbone.context_length},
        "classnames": list(saved.classnames),
        "template": saved.template,
        # the texts the learner tokenises; the context vectors replace tokens 1..n_ctx of each
        "prompts": [f"{prefix} {n}." for n in names] if isinstance(prefix, str) else None,
        "preprocess": preprocess_spec(backbone),
        "tensors": sorted(tensors),
        "open_clip_recipe": recipe_applies(learner),
    }
    write_safetensors_atomic(out, tensors, {"tailprompt": json.dumps(info)}, "export file")
    return info


def model_config(backbone: Any) -> dict[str, Any]:
    """The open_clip `CLIP(**config)` arguments of the backbone, QuickGELU as it was built."""
    import copy

    from open_clip.model import QuickGELU

    from tailprompt.backbone.architectures import architecture

    cfg = copy.deepcopy(architecture(backbone.arch).config)
    cfg.pop("custom_text", None)
    cfg["quick_gelu"] = any(isinstance(m, QuickGELU) for m in backbone.model.modules())
    return cfg


def preprocess_spec(backbone: Any) -> dict[str, Any]:
    """The eval preprocessing as data: resize the shorter side (bicubic), center crop, normalise."""
    from torchvision import transforms as T

    norm = next(t for t in backbone.preprocess_eval.transforms if isinstance(t, T.Normalize))
    return {"size": backbone.image_size, "resize": "shorter side, bicubic", "crop": "center",
            "mean": [float(v) for v in norm.mean], "std": [float(v) for v in norm.std]}


def recipe_applies(learner: Any) -> bool:
    """The docs/export.md recipe covers a learned context in front of the class name (CoOp, KgCoOp and the
    objectives on them); other learners export their tensors and, when image-independent, text features."""
    state = learner.prompt_state()
    return (set(state) == {"ctx"} and isinstance(getattr(learner, "prompt_prefix", None), str)
            and getattr(learner, "class_token_position", "end") == "end")
