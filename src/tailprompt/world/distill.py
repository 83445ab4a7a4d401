"""The embedded ViT: a small ViT image tower distilled from the embedded CLIP's conv tower.

A ViT trained contrastively from scratch did not learn shape in a CPU budget at 32 px (`pretrain`), so the
`embedded-vit` backbone is made by feature distillation instead: the student is the `embedded-vit`
architecture (``backbone/model_configs/embedded-vit.json``: open_clip's `CLIP` with a ViT image tower, 32 px,
patch 4 -> 64 patches + CLS, and the *same* text tower as `embedded`), built by the backbone's own
`build_model`. Its text tower and temperature are copied unchanged from the shipped `embedded` CLIP and
frozen, so both backbones embed class prompts identically and zero-shot classification needs no new text
side. Only the image tower trains: on freshly rendered pretraining batches (`pretrain.pretraining_batch`:
clean style, every attribute random, the held-out colour+shape pairs never rendered) it minimises
``1 - cos(student, teacher)`` against the frozen conv tower's image features, plus, with weight
`text_weight`, the multi-positive InfoNCE (`pretrain.contrastive_loss`) against the frozen text features of
the batch's captions. With `noisy_fraction` > 0 that share of every batch gets the `noisy` style's pixel
noise (`noisy_rows`: the benchmark renders its images in that style, which a student distilled on clean
scenes alone classified far worse than clean ones). With `augment_fraction` > 0 that share of every batch
is replaced by the world's training view of the same images (`training_views`: the crop + flip
`world.datasets.AUGMENT` gives the learners) before student and teacher see it: a student distilled on whole
scenes only has features that move under that crop, and prompt learners that train through the image tower
(MaPLe) then fit the crop rather than the classes. The learning-rate schedule is `pretrain.lr_at`.

`distill(cfg)` returns a `PretrainResult`; `save_embedded_vit(...)` writes the folder
`tailprompt.backbone.load_backbone("embedded-vit")` reads.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from tqdm import tqdm

from tailprompt import __version__
from tailprompt.backbone.architectures import (
    MODEL_CONFIG_DIR,
    Architecture,
    architecture_from_file,
    build_model,
    embedded_vit_weights_path,
)
from tailprompt.backbone.frozen import FrozenVLM
from tailprompt.utils import sha256_file, write_json_atomic, write_text_atomic
from tailprompt.world import captions as world_captions
from tailprompt.world import render as world_render
from tailprompt.world import vocab as world_vocab
from tailprompt.world.datasets import AUGMENT as WORLD_AUGMENT
from tailprompt.world.pretrain import (
    PRETRAIN_STYLE,
    PretrainConfig,
    PretrainResult,
    _param_groups,
    contrastive_loss,
    log_progress,
    lr_at,
    normalize_images,
    pretraining_batch,
    save_weights,
    zero_shot_section,
    zero_shot_table,
)

log = logging.getLogger(__name__)

DEFAULT_VIT_WEIGHTS = embedded_vit_weights_path()


def vit_architecture() -> Architecture:
    """The student's architecture: the package's model config (copied next to the weights)."""
    return architecture_from_file("embedded-vit", MODEL_CONFIG_DIR / "embedded-vit.json")


def student_from_teacher(teacher: FrozenVLM, seed: int, arch: Architecture | None = None) -> FrozenVLM:
    """A random-init ViT CLIP whose text tower and temperature are the teacher's, with gradients on the image
    tower only.

    Raises:
        ValueError: the teacher's text side does not fit `arch` (another text tower config).
    """
    arch = arch or vit_architecture()
    model = build_model(arch, arch.quick_gelu, seed)
    text_state = {k: v for k, v in teacher.model.state_dict().items() if not k.startswith("visual.")}
    expected = model.state_dict()
    misfit = [k for k, v in text_state.items() if k not in expected or expected[k].shape != v.shape]
    if misfit:
        raise ValueError(f"teacher's text tower does not fit {arch.name}: {', '.join(misfit[:3])}")
    missing, _ = model.load_state_dict(text_state, strict=False)
    if any(not k.startswith("visual.") for k in missing):
        raise ValueError(f"teacher lacks text weights of {arch.name}: {', '.join(missing[:3])}")
    vlm = FrozenVLM(model, arch=arch.name, identity=f"{arch.name}@distillation:{seed}",
                    embed_dim=int(arch.config["embed_dim"]))
    for p in model.visual.parameters():  # the adapter froze everything; the image tower is the one to train
        p.requires_grad_(True)
    return vlm


def distillation_loss(student_feats: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between student and teacher features [B, D] (any norm): half the MSE of unit vectors."""
    return (1 - F.cosine_similarity(student_feats, teacher_feats, dim=-1)).mean()


class FrozenTextFeatures:
    """Normalised text features of captions under a frozen text tower, memoised per caption string."""

    def __init__(self, vlm: FrozenVLM) -> None:
        self.vlm = vlm
        self.memo: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            feats = F.normalize(self.vlm.encode_text(self.vlm.tokenize(missing)), dim=-1)
            self.memo.update(zip(missing, feats))
        return torch.stack([self.memo[t] for t in texts])


def crop_box(
    height: int, width: int, scale: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: torchvision's `RandomResizedCrop.get_params` (area share in
    `scale`, aspect ratio log-uniform in 3/4-4/3, 10 tries, then the centre crop), drawn from `gen`."""
    area = height * width
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=gen)))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(torch.rand((), generator=gen)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def noisy_rows(images: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """uint8 [B, H, W, 3] with ``round(fraction * B)`` rows drawn by `gen` given the `noisy` style's pixel noise
    (Gaussian, sigma `render.NOISE_SIGMA` of the [0, 1] range, then clamped and re-quantised as rendering does)."""
    n = round(fraction * images.shape[0])
    if n == 0:
        return images
    rows = torch.randperm(images.shape[0], generator=gen)[:n]
    picked = images[rows].float() / 255  # [n, H, W, 3]
    noisy = picked + world_render.NOISE_SIGMA * torch.randn(picked.shape, generator=gen)
    out = images.clone()
    out[rows] = world_render.quantize(noisy.clamp(0.0, 1.0).permute(0, 3, 1, 2))
    return out


def training_views(images: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """uint8 [B, H, W, 3] with the first ``round(fraction * B)`` images replaced by a world training view
    (random resized crop, bicubic back to H x W, then a coin-flip horizontal flip: `WORLD_AUGMENT`)."""
    n = round(fraction * images.shape[0])
    if n == 0:
        return images
    out = images.clone()
    height, width = images.shape[1:3]
    for i in range(n):
        top, left, h, w = crop_box(height, width, WORLD_AUGMENT.crop_scale, gen)
        view = TF.resized_crop(images[i].permute(2, 0, 1).float(), top, left, h, w, [height, width],
                               interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        if WORLD_AUGMENT.flip and float(torch.rand((), generator=gen)) < 0.5:
            view = view.flip(-1)
        out[i] = view.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
    return out


def _step_losses(
    student: FrozenVLM, teacher: FrozenVLM, text: FrozenTextFeatures, images: torch.Tensor, texts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distillation, contrastive) losses of one batch; the teacher runs without a graph."""
    x = normalize_images(images)
    with torch.no_grad():
        target = teacher.model.encode_image(x)
    feats = student.model.encode_image(x)
    ids: dict[str, int] = {}
    caption_ids = torch.tensor([ids.setdefault(t, len(ids)) for t in texts])
    scale = student.model.logit_scale.detach().exp()
    return distillation_loss(feats, target), contrastive_loss(feats, text(texts), scale, caption_ids)


@torch.no_grad()
def probe_distillation_loss(student: FrozenVLM, teacher: FrozenVLM, seed: int, size: int) -> float:
    """Distillation loss (eval mode) on the fixed batch `pretrain.probe_loss` uses (step index -1)."""
    was_training = student.model.training
    student.model.eval()
    images, _ = pretraining_batch(seed, -1, size)
    x = normalize_images(images)
    loss = float(distillation_loss(student.model.encode_image(x), teacher.model.encode_image(x)))
    student.model.train(was_training)
    return loss


def distill(cfg: PretrainConfig, teacher: FrozenVLM, progress: bool = True) -> PretrainResult:
    """Distil `teacher`'s image tower into a fresh `embedded-vit` student for `cfg.steps` steps.

    Deterministic given the seed and thread count. The result's probe losses are distillation losses.
    """
    teacher.model.eval()
    student = student_from_teacher(teacher, cfg.seed)
    model = student.model
    text = FrozenTextFeatures(teacher)
    optimizer = torch.optim.AdamW(_param_groups(model.visual, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98),
                                  eps=1e-6)
    start_loss = probe_distillation_loss(student, teacher, cfg.seed, cfg.probe_size)
    losses: list[float] = []
    t0 = time.perf_counter()
    model.visual.train()
    bar = tqdm(range(cfg.steps), desc="distil embedded-vit", disable=not progress, mininterval=2.0, unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        images, texts = pretraining_batch(cfg.seed, step, cfg.batch_size)
        if cfg.noisy_fraction:  # before the crop, as a noisy world image is cropped by the learners' augmentation
            noise_gen = world_render.seeded_generator("distill-noise", cfg.seed, step)
            images = noisy_rows(images, cfg.noisy_fraction, noise_gen)
        if cfg.augment_fraction:
            gen = world_render.seeded_generator("distill-views", cfg.seed, step)
            images = training_views(images, cfg.augment_fraction, gen)
        kd, nce = _step_losses(student, teacher, text, images, texts)
        loss = kd + cfg.text_weight * nce if cfg.text_weight else kd
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
        bar.set_postfix(kd=f"{kd.item():.4f}", nce=f"{nce.item():.3f}", refresh=False)
        log_progress(losses, cfg.steps)
    bar.close()
    wall = time.perf_counter() - t0
    model.eval()
    end_loss = probe_distillation_loss(student, teacher, cfg.seed, cfg.probe_size)
    result = PretrainResult(student, losses, start_loss, end_loss, wall)
    if cfg.eval_per_class > 0:
        result.zero_shot = zero_shot_table(student, cfg.eval_per_class)
    return result


def manifest_text(
    cfg: PretrainConfig, result: PretrainResult, command: str, threads: int, weights: Path, teacher: FrozenVLM
) -> str:
    """MANIFEST.md of the embedded ViT: how it was distilled and what it scores zero-shot."""
    visual = sum(p.numel() for p in result.vlm.model.visual.parameters())
    total = sum(p.numel() for p in result.vlm.model.parameters())
    vcfg = vit_architecture().config["vision_cfg"]
    held = sorted(world_vocab.held_out_pairs())
    objective = "1 - cos(student, teacher image features)" + (
        f" + {cfg.text_weight} x multi-positive InfoNCE against the frozen text tower" if cfg.text_weight else ""
    )
    window = result.losses[-50:]
    lines = [
        "# Embedded ViT: how these weights were made",
        "",
        f"- command: `{command}`",
        f"- image tower: open_clip ViT, {vcfg['image_size']} px, patch {vcfg['patch_size']}, width"
        f" {vcfg['width']}, {vcfg['layers']} layers, {vcfg['width'] // vcfg['head_width']} heads; text tower,"
        f" projection and temperature copied unchanged from the embedded CLIP (`{teacher.identity}`) and frozen",
        f"- distilled from the embedded CLIP's conv image tower (frozen teacher); objective {objective}",
        f"- seed {cfg.seed}, {cfg.steps} steps, batch {cfg.batch_size}, AdamW lr {cfg.lr} wd {cfg.weight_decay},"
        f" {cfg.warmup} warm-up steps then cosine",
        f"- wall time {result.wall_s / 60:.1f} min on {threads} CPU thread(s)"
        f" ({platform.processor() or platform.machine()})",
        f"- tailprompt {__version__}, torch {torch.__version__}, open_clip {open_clip.__version__},"
        f" world renderer {world_render.RENDER_VERSION}",
        f"- parameters {total / 1e6:.2f} M ({visual / 1e6:.2f} M in the image tower); weights `{weights.name}`"
        f" (fp16) sha256 `{sha256_file(weights)}`",
        f"- distillation loss on a fixed probe batch of {cfg.probe_size}: {result.probe_loss_start:.4f} before,"
        f" {result.probe_loss_end:.4f} after; final training loss (mean of last {len(window)} steps)"
        f" {sum(window) / len(window):.4f}",
        "",
        f"Distillation data: `{PRETRAIN_STYLE}` style scenes with every attribute random, as the embedded CLIP's"
        " pretraining"
        + (f", {cfg.augment_fraction:.0%} of each batch as the world's training view (random resized crop"
           f" keeping {WORLD_AUGMENT.crop_scale[0]:.0%}-{WORLD_AUGMENT.crop_scale[1]:.0%} of the area, flip)"
           " for student and teacher alike" if cfg.augment_fraction else "")
        + (f", {cfg.noisy_fraction:.0%} of each batch (drawn at random, before any crop) with the `noisy` style's"
           f" pixel noise (sigma {world_render.NOISE_SIGMA})" if cfg.noisy_fraction else "")
        + "; colour+shape pairs never rendered: "
        + ", ".join(f"{world_render.COLOURS[c]} {world_render.SHAPES[s]}" for c, s in held)
        + ".",
        "",
    ]
    if result.zero_shot:
        lines += zero_shot_section(result.zero_shot, cfg.eval_per_class)
    return "\n".join(lines)


def save_embedded_vit(
    result: PretrainResult, cfg: PretrainConfig, out: str | Path, command: str, threads: int, teacher: FrozenVLM
) -> Path:
    """Write weights (`out`), config.json, vocabulary.txt and MANIFEST.md (next to `out`); return `out`."""
    out = Path(out)
    save_weights(result.vlm.model, out)
    write_json_atomic(out.parent / "config.json", vit_architecture().config)
    write_text_atomic(out.parent / "vocabulary.txt", "\n".join(world_captions.vocabulary()) + "\n")
    write_text_atomic(out.parent / "MANIFEST.md", manifest_text(cfg, result, command, threads, out, teacher))
    log.info("wrote %s (%.1f MB) and config.json, vocabulary.txt, MANIFEST.md", out, out.stat().st_size / 1e6)
    return out

