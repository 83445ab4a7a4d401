"""Contrastive pretraining of the embedded tiny CLIP on the procedural world (`tailprompt.world`).

The model is the `embedded` architecture of `tailprompt.backbone` (``backbone/model_configs/embedded.json``:
open_clip's `CLIP` with a ModifiedResNet image tower, layers (1, 1, 1, 1), width 16, 32 px; a from-scratch
ViT did not learn shape in a CPU budget; a 4-layer, width-128 text tower with context 32 and open_clip's BPE
vocabulary), built and run by the backbone's own code: `build_model` for the weights and `FrozenVLM` for
tokenising and the (cut, causal) text forward. Each step renders a fresh batch of clean scenes, with the
colour+shape pairs of `vocab.held_out_pairs()` never drawn, captions them, and minimises CLIP's symmetric
InfoNCE (Radford et al. 2021, eq. in Fig. 3), except that images whose captions are the same string are all
positives for that caption (soft targets spread evenly over them), since a batch of 256 from a small world
repeats short captions such as "a red star.".

`pretrain(cfg)` returns the trained model and its loss history; `save_embedded(...)` writes
weights.safetensors (fp16), config.json, vocabulary.txt and MANIFEST.md into one folder, the layout
`tailprompt.backbone.load_backbone("embedded")` reads.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tailprompt import __version__
from tailprompt.backbone.architectures import (
    MODEL_CONFIG_DIR,
    Architecture,
    architecture_from_file,
    build_model,
    embedded_weights_path,
)
from tailprompt.backbone.frozen import FrozenVLM
from tailprompt.backbone.transforms import CLIP_MEAN, CLIP_STD
from tailprompt.utils import sha256_file, stable_hash, write_json_atomic, write_safetensors_atomic, write_text_atomic
from tailprompt.world import captions as world_captions
from tailprompt.world import datasets as world_datasets
from tailprompt.world import render as world_render
from tailprompt.world import vocab as world_vocab

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = embedded_weights_path()
PRETRAIN_STYLE = "clean"


def embedded_architecture() -> Architecture:
    """The architecture pretraining builds: the package's model config (copied next to the weights)."""
    return architecture_from_file("embedded", MODEL_CONFIG_DIR / "embedded.json")


Vision = Literal["conv", "vit"]  # conv: contrastive CLIP (`embedded`); vit: distilled ViT (`embedded-vit`)


@dataclass
class PretrainConfig:
    """Pretraining schedule: AdamW, linear warm-up then cosine decay to zero (open_clip's `cosine_lr`).

    `vision` picks the model: ``conv`` trains the `embedded` CLIP contrastively (`pretrain`), ``vit`` distils
    the `embedded-vit` image tower from it (`tailprompt.world.distill`), where `text_weight` weighs the
    InfoNCE against the frozen text tower added to the distillation loss, `noisy_fraction` the share of each
    batch rendered in the world's `noisy` style (`distill.noisy_rows`) and `augment_fraction` the share that
    student and teacher see as a world training view (`distill.training_views`).
    `default_config` gives each vision's defaults.
    """

    vision: Vision = "conv"
    steps: int = 1600
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    probe_size: int = 512  # fixed held-aside batch whose loss is measured before and after training
    eval_per_class: int = 50  # test images per class in the zero-shot table (0: no table)
    text_weight: float = 0.0  # vit only
    augment_fraction: float = 0.0  # vit only: share of each batch seen as a training view (crop + flip)
    noisy_fraction: float = 0.0  # vit only: share of each batch with the noisy style's pixel noise

    def __post_init__(self) -> None:
        if self.vision == "conv" and self.text_weight:
            raise ValueError("text_weight applies to vision 'vit' only (the conv CLIP trains its text tower)")
        for name in ("augment_fraction", "noisy_fraction"):
            share = getattr(self, name)
            if self.vision == "conv" and share:
                raise ValueError(f"{name} applies to vision 'vit' only")
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {share}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (contrastive pairs), got {self.batch_size}")
        if self.probe_size < 2:
            raise ValueError(f"probe_size must be >= 2, got {self.probe_size}")


def backbone_name(vision: Vision) -> str:
    """The `load_backbone` name of the model a vision builds."""
    return "embedded-vit" if vision == "vit" else "embedded"


def default_config(vision: Vision) -> PretrainConfig:
    """Each vision's defaults: the conv CLIP's published schedule; the ViT's distillation schedule (a
    student step costs ~10x a conv CLIP step on the CPU, so smaller batches and a 30-minute budget)."""
    if vision == "vit":
        return PretrainConfig(vision="vit", steps=2000, batch_size=128, lr=2e-3, warmup=100, text_weight=0.5,
                              augment_fraction=0.5, noisy_fraction=0.5)
    return PretrainConfig()


@dataclass
class PretrainResult:
    vlm: FrozenVLM  # the trained model behind the backbone adapter (eval mode)
    losses: list[float]  # training loss per step
    probe_loss_start: float
    probe_loss_end: float
    wall_s: float
    zero_shot: dict[str, Any] = field(default_factory=dict)


def trainable_embedded(seed: int, arch: Architecture | None = None) -> FrozenVLM:
    """A random-init embedded CLIP behind the backbone adapter, with gradients on.

    The adapter freezes its model for prompt tuning; pretraining is the one place that trains the towers,
    so it switches gradients back on and puts the inner model (BatchNorm) in train mode itself.
    """
    arch = arch or embedded_architecture()
    model = build_model(arch, arch.quick_gelu, seed)
    vlm = FrozenVLM(model, arch=arch.name, identity=f"{arch.name}@pretraining:{seed}",
                    embed_dim=int(arch.config["embed_dim"]))
    for p in model.parameters():
        p.requires_grad_(True)
    return vlm


Tokenizer = Callable[[list[str]], torch.Tensor]


def make_tokenizer(vlm: FrozenVLM) -> Tokenizer:
    """`vlm.tokenize` memoised per text (a pretraining run sees the same short captions many times)."""
    memo: dict[str, torch.Tensor] = {}

    def tokenize(texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            memo.update(zip(missing, vlm.tokenize(missing)))
        return torch.stack([memo[t] for t in texts])

    return tokenize


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> CLIP-normalised float [N, 3, H, W].

    Matches the backbone's eval preprocessing of a 32 px PIL image (resize and crop are identities).
    """
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def contrastive_loss(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor, caption_ids: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with multi-positive soft targets.

    Args:
        image_feats: [B, D] (any norm), text_feats: [B, D], logit_scale: scalar (already exp'd),
        caption_ids: [B] long, equal for equal caption strings.
    Returns:
        scalar: mean of image->text and text->image cross-entropies; targets of row i are uniform
        over the items with i's caption (reduces to CLIP's loss when all captions differ).
    """
    img = F.normalize(image_feats, dim=-1)
    txt = F.normalize(text_feats, dim=-1)
    logits = logit_scale * img @ txt.t()  # [B, B]
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)  # symmetric matrix: also the text->image targets
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def pretraining_batch(seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
    """Images (uint8 [B, 32, 32, 3]) and captions of one pretraining step, a function of (seed, step)."""
    gen = world_render.seeded_generator("pretrain", world_render.STREAM_VERSION, seed, step)
    scenes = world_render.sample_scenes(batch_size, gen, pairs=world_vocab.pretraining_pairs())
    images = world_render.quantize(world_render.render(scenes, PRETRAIN_STYLE, gen))
    rng = random.Random(int(stable_hash(["pretrain-captions", seed, step], length=15), 16))
    return images, world_captions.captions(scenes, rng)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate of step `step` (0-based): linear warm-up over `warmup` steps, then cosine to 0."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # As open_clip's trainer: no decay on gains, biases, norms and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        plain = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if plain else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _batch_loss(vlm: FrozenVLM, tokenize: Tokenizer, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
    ids: dict[str, int] = {}
    caption_ids = torch.tensor([ids.setdefault(t, len(ids)) for t in texts])
    image_feats = vlm.model.encode_image(normalize_images(images))
    text_feats = vlm.encode_text(tokenize(texts))
    return contrastive_loss(image_feats, text_feats, vlm.model.logit_scale.exp(), caption_ids)


@torch.no_grad()
def probe_loss(vlm: FrozenVLM, tokenize: Tokenizer, seed: int, size: int) -> float:
    """Contrastive loss (eval mode) on a fixed batch never used for training (step index -1)."""
    was_training = vlm.model.training
    vlm.model.eval()
    images, texts = pretraining_batch(seed, -1, size)
    loss = float(_batch_loss(vlm, tokenize, images, texts))
    vlm.model.train(was_training)
    return loss


def pretrain(cfg: PretrainConfig, progress: bool = True) -> PretrainResult:
    """Train the embedded CLIP from scratch for `cfg.steps` steps; deterministic given seed and threads."""
    vlm = trainable_embedded(cfg.seed)
    model = vlm.model
    tokenize = make_tokenizer(vlm)
    groups = _param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    start_loss = probe_loss(vlm, tokenize, cfg.seed, cfg.probe_size)
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain-embedded", disable=not progress, mininterval=2.0, unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        images, texts = pretraining_batch(cfg.seed, step, cfg.batch_size)
        loss = _batch_loss(vlm, tokenize, images, texts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.detach().item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        log_progress(losses, cfg.steps)
    bar.close()
    wall = time.perf_counter() - t0
    model.eval()
    end_loss = probe_loss(vlm, tokenize, cfg.seed, cfg.probe_size)
    result = PretrainResult(vlm, losses, start_loss, end_loss, wall)
    if cfg.eval_per_class > 0:
        result.zero_shot = zero_shot_table(vlm, cfg.eval_per_class)
    return result


def log_progress(losses: list[float], steps: int, every: int = 100) -> None:
    """Every `every` steps and at the last, log the mean loss of the last `every` steps."""
    step = len(losses)
    if step % every == 0 or step == steps:
        window = losses[-every:]
        log.info("step %d/%d loss %.4f (mean of last %d)", step, steps, sum(window) / len(window), len(window))


# ------------------------------------------------------------------------------------------------
# Zero-shot evaluation


@torch.no_grad()
def _class_predictions(
    vlm: FrozenVLM, vocab: world_vocab.LabelVocab, style: str, per_class: int, seed: int, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) labels [N] of zero-shot classification on a world test split among all classes."""
    vlm.model.eval()
    text = vlm.tokenize([vocab.template.format(c) for c in vocab.classnames()])
    text = F.normalize(vlm.encode_text(text), dim=-1)
    images, labels = world_datasets.render_split(vocab, style, "test", seed, per_class)
    preds = [
        (F.normalize(vlm.encode_image(normalize_images(images[i : i + batch_size])), dim=-1) @ text.t()).argmax(1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(preds), labels


def zero_shot_accuracy(
    vlm: FrozenVLM, vocab: world_vocab.LabelVocab, style: str, per_class: int, seed: int = 0
) -> dict[str, float]:
    """Top-1 zero-shot accuracy (%) on the first `per_class` test images per class of a world vocabulary.

    Returns {"all", "base", "new"}: over all classes and over the checkerboard halves (labels below /
    from `vocab.num_base()`), classifying among all classes in every case.
    """
    preds, labels = _class_predictions(vlm, vocab, style, per_class, seed)
    correct = (preds == labels).float()
    base = labels < vocab.num_base()
    return {
        "all": 100 * float(correct.mean()),
        "base": 100 * float(correct[base].mean()),
        "new": 100 * float(correct[~base].mean()),
    }


def zero_shot_table(vlm: FrozenVLM, per_class: int) -> dict[str, Any]:
    """{vocab: {style: {"all", "base", "new"}}} over the registered vocabularies and all colour+shape pairs.

    For `colour_shape_all` (80 classes), "new" is replaced by "held_out" (the pairs never pretrained on)
    and "base" by "seen".
    """
    table: dict[str, Any] = {}
    for vocab in world_vocab.VOCABULARIES.values():
        table[vocab.name] = {s: zero_shot_accuracy(vlm, vocab, s, per_class) for s in world_render.STYLES}
    table[world_vocab.FULL_COLOUR_SHAPE.name] = {
        s: _seen_vs_held_out(vlm, per_class, s) for s in world_render.STYLES
    }
    return table


def _seen_vs_held_out(vlm: FrozenVLM, per_class: int, style: str) -> dict[str, float]:
    vocab = world_vocab.FULL_COLOUR_SHAPE
    classes = vocab.classes()
    held = world_vocab.held_out_pairs()
    preds, labels = _class_predictions(vlm, vocab, style, per_class, 0)
    correct = (preds == labels).float()
    is_held = torch.tensor([(classes[int(y)]["colour"], classes[int(y)]["shape"]) in held for y in labels])
    return {
        "all": 100 * float(correct.mean()),
        "seen": 100 * float(correct[~is_held].mean()),
        "held_out": 100 * float(correct[is_held].mean()),
    }


# ------------------------------------------------------------------------------------------------
# Writing the embedded model folder


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Write the state dict as safetensors, floats in fp16 (the shipped file stays < 20 MB), atomically."""
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }
    write_safetensors_atomic(path, state, {"format": "pt", "arch": "tailprompt-embedded"})


def manifest_text(
    cfg: PretrainConfig, result: PretrainResult, command: str, threads: int, weights: Path
) -> str:
    """MANIFEST.md: how the weights were made and what they score zero-shot."""
    n_params = sum(p.numel() for p in result.vlm.model.parameters())
    held = sorted(world_vocab.held_out_pairs())
    lines = [
        "# Embedded CLIP: how these weights were made",
        "",
        f"- command: `{command}`",
        f"- seed {cfg.seed}, {cfg.steps} steps, batch {cfg.batch_size}, AdamW lr {cfg.lr}"
        f" wd {cfg.weight_decay}, {cfg.warmup} warm-up steps then cosine; multi-positive symmetric InfoNCE",
        f"- wall time {result.wall_s / 60:.1f} min on {threads} CPU thread(s)"
        f" ({platform.processor() or platform.machine()})",
        f"- tailprompt {__version__}, torch {torch.__version__}, open_clip {open_clip.__version__},"
        f" world renderer {world_render.RENDER_VERSION}",
        f"- parameters {n_params / 1e6:.2f} M; weights `{weights.name}` (fp16)"
        f" sha256 `{sha256_file(weights)}`",
        f"- contrastive loss on a fixed probe batch of {cfg.probe_size}:"
        f" {result.probe_loss_start:.3f} before,"
        f" {result.probe_loss_end:.3f} after; final training loss (mean of last 50 steps)"
        f" {sum(result.losses[-50:]) / len(result.losses[-50:]):.3f}",
        "",
        f"Pretraining data: `{PRETRAIN_STYLE}` style scenes with every attribute random, captioned by"
        " `tailprompt.world.captions.caption`. Colour+shape pairs held out of pretraining (the new half of"
        " `colour_shape`, which contains the new half of `size_colour_shape`; no image with these pairs was"
        " ever rendered for pretraining): "
        + ", ".join(f"{world_render.COLOURS[c]} {world_render.SHAPES[s]}" for c, s in held)
        + ". The new half of `texture_shape` is a set of unseen *label* combinations but its images were"
        " pretrained on.",
        "",
    ]
    if result.zero_shot:
        lines += zero_shot_section(result.zero_shot, cfg.eval_per_class)
    return "\n".join(lines)


ZERO_SHOT_HEADING = "## Zero-shot top-1 (%)"


def zero_shot_section(table: dict[str, Any], per_class: int, note: str = "") -> list[str]:
    """MANIFEST.md lines of the zero-shot table from `zero_shot_table`."""
    styles = world_render.STYLES
    lines = [
        f"{ZERO_SHOT_HEADING}, template \"{world_vocab.TEMPLATE}\", {per_class} test images per class",
        "",
        "Classified among all classes of the vocabulary; base / new are its first / second label halves.",
        *([note] if note else []),
        "",
        "| vocabulary | classes | " + " | ".join(f"{s} all / base / new" for s in styles) + " |",
        "|---|---|" + "---|" * len(styles),
    ]
    for name, vocab in world_vocab.VOCABULARIES.items():
        cells = [_cell(table[name][s], ("all", "base", "new")) for s in styles]
        lines.append(f"| {name} | {len(vocab.classnames())} | " + " | ".join(cells) + " |")
    full = table[world_vocab.FULL_COLOUR_SHAPE.name]
    cells = [_cell(full[s], ("all", "seen", "held_out")) for s in styles]
    n_full = len(world_vocab.FULL_COLOUR_SHAPE.classnames())
    lines += [f"| all colour+shape pairs (all / seen / held out) | {n_full} | " + " | ".join(cells) + " |", ""]
    return lines


def rescore(weights: str | Path, per_class: int, vision: Vision = "conv") -> dict[str, Any]:
    """Re-measure the zero-shot table of existing weights and rewrite that section of MANIFEST.md.

    For renderer changes that leave the pretraining data alone (an evaluation style's pixels): the
    weights stay as they are and the table says which renderer scored it. `vision` names the backbone
    (`embedded` or `embedded-vit`) the weights belong to.
    """
    from tailprompt.backbone import load_backbone

    weights = Path(weights)
    table = zero_shot_table(load_backbone(backbone_name(vision), weights=weights), per_class)
    manifest = weights.parent / "MANIFEST.md"
    head = manifest.read_text(encoding="utf-8").split(ZERO_SHOT_HEADING)[0] if manifest.is_file() else ""
    flag = " --vision vit" if vision == "vit" else ""
    note = (
        f"Re-scored by `tailprompt pretrain-embedded{flag} --rescore --eval-per-class {per_class}` with world"
        f" renderer {world_render.RENDER_VERSION} (weights unchanged, sha256 `{sha256_file(weights)}`)."
    )
    write_text_atomic(manifest, head.rstrip() + "\n\n" + "\n".join(zero_shot_section(table, per_class, note)))
    return table


def _cell(accs: dict[str, float], keys: tuple[str, ...]) -> str:
    return " / ".join(f"{accs[k]:.1f}" for k in keys)


def save_embedded(
    result: PretrainResult, cfg: PretrainConfig, out: str | Path, command: str, threads: int
) -> Path:
    """Write weights (`out`), config.json, vocabulary.txt and MANIFEST.md (next to `out`); return `out`."""
    out = Path(out)
    save_weights(result.vlm.model, out)
    write_json_atomic(out.parent / "config.json", embedded_architecture().config)
    write_text_atomic(out.parent / "vocabulary.txt", "\n".join(world_captions.vocabulary()) + "\n")
    write_text_atomic(out.parent / "MANIFEST.md", manifest_text(cfg, result, command, threads, out))
    log.info("wrote %s (%.1f MB) and config.json, vocabulary.txt, MANIFEST.md", out, out.stat().st_size / 1e6)
    return out


def summary(result: PretrainResult) -> dict[str, Any]:
    return json.loads(json.dumps({
        "probe_loss_start": result.probe_loss_start,
        "probe_loss_end": result.probe_loss_end,
        "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:]),
        "wall_s": result.wall_s,
        "zero_shot": result.zero_shot,
    }))
