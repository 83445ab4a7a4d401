"""`tailprompt inspect`: what a run's prompts learned, in words: nearest tokens, norms, drift of the classes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailprompt.cli import user_errors
from tailprompt.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a run's context vectors as nearest words, their norms, and how far the class features moved",
        description="For each learned context vector: the nearest vocabulary tokens (cosine to the token "
        "embeddings; for a closed-vocabulary backbone such as `embedded`, its words only), its norm next to "
        "the typical token norm, and its cosine to the initial word (ctx_init). For the training classes: "
        "the drift of the learned text features from the frozen hand-template ones (1 - cosine).",
    )
    p.add_argument("--run", required=True, help="a finished run folder (OUTPUT_DIR/<run_id>/)")
    p.add_argument("--top", type=int, default=5, help="nearest tokens per vector (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with user_errors():
        if args.top < 1:
            raise UserError(f"--top: expected an integer >= 1, got {args.top}")
        report = inspect_run(Path(args.run), args.top)
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def inspect_run(run_dir: Path, top: int = 5) -> dict[str, Any]:
    import torch

    from tailprompt.engine.saved import open_run, run_backbone, run_learner

    saved = open_run(run_dir)
    backbone = run_backbone(saved, "cpu")
    learner = run_learner(saved, backbone)
    vocab = token_table(backbone)
    init_text = str(getattr(learner.config, "ctx_init", "") or "")
    vectors = []
    for name, tensor in learner.prompt_state().items():
        if not is_context(name, tensor, backbone.text_width):
            continue
        rows = tensor.detach().float().reshape(-1, tensor.shape[-1])
        init = initial_embeddings(backbone, init_text, tensor.shape[-2]) if name.endswith("ctx") else None
        for i, v in enumerate(rows):
            position = i % tensor.shape[-2]
            vectors.append({
                "tensor": name, "index": i, "norm": float(v.norm()),
                "nearest": nearest_tokens(v, vocab, top),
                "cosine_to_init": (None if init is None or tensor.dim() != 2
                                   else float(torch.nn.functional.cosine_similarity(v, init[position], dim=0))),
                "init_word": _init_word(init_text, position) if init is not None else None,
            })
    with torch.no_grad(), backbone.autocast():
        learned = learner.text_features(None).float() if not learner.instance_conditioned else None
    frozen = frozen_class_features(backbone, saved.classnames, saved.template)
    classes = None
    if learned is not None:
        drift = 1.0 - (learned * frozen).sum(-1)
        classes = {
            "mean_drift": float(drift.mean()), "max_drift": float(drift.max()),
            "per_class": {c: float(d) for c, d in zip(saved.classnames, drift.tolist())},
        }
    return {"run": str(run_dir), "learner": saved.config.learner.name, "init": init_text or None,
            "token_norm_median": float(vocab[1].norm(dim=-1).median()), "vectors": vectors, "classes": classes}


def is_context(name: str, tensor: Tensor, width: int) -> bool:
    """Prompt vectors that live in the token-embedding space (CoOp's `ctx`, MaPLe's text prompts)."""
    return tensor.shape[-1] == width and tensor.dim() in (2, 3) and ("ctx" in name or "prompts_text" in name)


def token_table(backbone: Any) -> tuple[list[str], Tensor]:
    """(token strings, their embeddings [V, W]); a closed-vocabulary backbone keeps its own words' tokens."""
    bpe = backbone._tokenizer()
    weight = backbone.token_embedding.weight.detach().float().cpu()
    ids = list(range(min(weight.shape[0], len(bpe.decoder))))
    if backbone.vocabulary:
        wanted = {t for word in backbone.vocabulary for t in bpe.encode(word)}
        ids = [i for i in ids if i in wanted]
    return [bpe.decoder[i].replace("</w>", "") for i in ids], weight[ids]


def nearest_tokens(vector: Tensor, vocab: tuple[list[str], Tensor], top: int) -> list[dict[str, Any]]:
    import torch

    words, table = vocab
    cos = torch.nn.functional.cosine_similarity(table, vector[None].cpu(), dim=-1)
    best = cos.topk(min(top, len(words)))
    return [{"token": words[i], "cosine": float(c)} for c, i in zip(best.values.tolist(), best.indices.tolist())]


def initial_embeddings(backbone: Any, init_text: str, n_ctx: int) -> Tensor | None:
    """Token embeddings `[n_ctx, W]` of the init words, or None for a random init."""
    if not init_text:
        return None
    tokens = backbone.tokenize([init_text])[0, 1 : 1 + n_ctx].to(backbone.device)
    return backbone.token_embedding(tokens).detach().float().cpu()


def _init_word(init_text: str, position: int) -> str | None:
    words = init_text.split()
    return words[position] if position < len(words) else None


def frozen_class_features(backbone: Any, classnames: list[str], template: str) -> Tensor:
    from tailprompt.prompts.common import template_text_features

    return template_text_features(backbone, classnames, [template]).float()


def render_text(report: dict[str, Any]) -> str:
    lines = [f"{report['run']}  learner {report['learner']}  init {report['init']!r}",
             f"context vectors (typical token norm {report['token_norm_median']:.3f}):"]
    for v in report["vectors"]:
        near = ", ".join(f"{t['token']} {t['cosine']:.2f}" for t in v["nearest"])
        init = ("" if v["cosine_to_init"] is None
                else f"  cos to init {v['init_word']!r} {v['cosine_to_init']:.2f}")
        lines.append(f"  {v['tensor']}[{v['index']}]  norm {v['norm']:.3f}{init}  nearest: {near}")
    classes = report["classes"]
    if classes is None:
        lines.append("classes: instance-conditioned learner (features depend on the image); no drift")
    else:
        lines.append(f"classes: drift from the frozen features (1 - cos) mean {classes['mean_drift']:.4f}, "
                     f"max {classes['max_drift']:.4f}")
        for name, d in sorted(classes["per_class"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {d:.4f}  {name}")
    return "\n".join(lines)
