"""CLIP image preprocessing: PIL image -> normalised FloatTensor[3, S, S].

eval: resize the shorter side to S (bicubic) + center crop, as OpenAI's `clip.load` preprocess.
train (the policy of `data.augment`, see `tailprompt.data.augment`):
- ``crop_flip`` (default): RandomResizedCrop(S, scale=crop_scale, default (0.08, 1)) + horizontal flip, the
  CoOp/Dassl training augmentation (``random_resized_crop`` + ``random_flip``).
- ``randaugment``: resize to S x S + Dassl's ``RandAugment(n=2, m=10)`` (``INPUT.TRANSFORMS: [randaugment,
  normalize]``, CoPrompt's setting): two operations drawn with replacement from its 16 (Dassl
  `dassl/data/transforms/randaugment.py:randaugment_list`), each at magnitude `m / 30` of its range, with a
  random sign where Dassl flips one. The draws use torch's RNG (Dassl uses Python's `random`), so the
  per-image seeding of the data layer makes every augmented view reproducible. `SolarizeAdd` is applied as
  intended (Dassl's `np.int` fails on NumPy >= 1.24).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

TrainPolicy = Literal["crop_flip", "randaugment"]

# OpenAI CLIP's normalisation (open_clip.constants.OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_CROP_SCALE = (0.08, 1.0)


def _to_rgb(image: Any) -> Any:
    # A module-level function (not a lambda) keeps the transform picklable for DataLoader workers.
    return image.convert("RGB")


def eval_transform(
    image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Callable[[Any], Any]:
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            _to_rgb,
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


# Dassl's INPUT.RANDAUGMENT_N / RANDAUGMENT_M defaults.
RANDAUGMENT_N, RANDAUGMENT_M = 2, 10
_CUTOUT_FILL = (125, 123, 114)


def _signed(v: float) -> float:
    """`v` or `-v` with probability 1/2 (Dassl: `if random.random() > 0.5: v = -v`)."""
    return -v if float(torch.rand(())) > 0.5 else v


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs)


def _auto_contrast(img: Image.Image, _: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def _equalize(img: Image.Image, _: float) -> Image.Image:
    return ImageOps.equalize(img)


def _invert(img: Image.Image, _: float) -> Image.Image:
    return ImageOps.invert(img)


def _rotate(img: Image.Image, v: float) -> Image.Image:
    return img.rotate(_signed(v))


def _posterize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.posterize(img, int(v))


def _solarize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.solarize(img, v)


def _solarize_add(img: Image.Image, addition: float, threshold: int = 128) -> Image.Image:
    shifted = np.clip(np.asarray(img).astype(np.int64) + addition, 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(shifted), threshold)


def _color(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Color(img).enhance(v)


def _contrast(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(v)


def _brightness(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(v)


def _sharpness(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(v)


def _shear_x(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, _signed(v), 0, 0, 1, 0))


def _shear_y(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, 0, _signed(v), 1, 0))


def _cutout_abs(img: Image.Image, v: float) -> Image.Image:
    """A `v` x `v` grey square at a uniform position (clipped at the borders)."""
    w, h = img.size
    x0 = int(max(0, float(torch.rand(())) * w - v / 2.0))
    y0 = int(max(0, float(torch.rand(())) * h - v / 2.0))
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), _CUTOUT_FILL)
    return img


def _translate_x_abs(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, _signed(v), 0, 1, 0))


def _translate_y_abs(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, 0, 0, 1, _signed(v)))


# (operation, min, max) in Dassl's `randaugment_list` order.
RANDAUGMENT_OPS: tuple[tuple[Callable[[Image.Image, float], Image.Image], float, float], ...] = (
    (_auto_contrast, 0, 1),
    (_equalize, 0, 1),
    (_invert, 0, 1),
    (_rotate, 0, 30),
    (_posterize, 4, 8),
    (_solarize, 0, 256),
    (_solarize_add, 0, 110),
    (_color, 0.1, 1.9),
    (_contrast, 0.1, 1.9),
    (_brightness, 0.1, 1.9),
    (_sharpness, 0.1, 1.9),
    (_shear_x, 0.0, 0.3),
    (_shear_y, 0.0, 0.3),
    (_cutout_abs, 0, 40),
    (_translate_x_abs, 0.0, 100),
    (_translate_y_abs, 0.0, 100),
)


class RandAugment:
    """Dassl's `RandAugment(n, m)` on PIL images, drawing from torch's RNG (picklable for workers)."""

    def __init__(self, n: int = RANDAUGMENT_N, m: int = RANDAUGMENT_M) -> None:
        if not 0 <= m <= 30:
            raise ValueError(f"RandAugment magnitude m: expected 0..30, got {m}")
        self.n, self.m = n, m

    def __call__(self, img: Image.Image) -> Image.Image:
        for index in torch.randint(len(RANDAUGMENT_OPS), (self.n,)).tolist():  # with replacement
            op, lo, hi = RANDAUGMENT_OPS[index]
            img = op(img, (self.m / 30) * (hi - lo) + lo)
        return img


def train_transform(
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    crop_scale: tuple[float, float] = TRAIN_CROP_SCALE,
    flip: bool = True,
    policy: TrainPolicy = "crop_flip",
) -> Callable[[Any], Any]:
    from torchvision import transforms as T

    if policy == "randaugment":
        # Dassl resizes to INPUT.SIZE (both sides) when no crop is configured, then augments.
        steps: list[Any] = [
            T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
            _to_rgb,
            RandAugment(),
        ]
    elif policy == "crop_flip":
        steps = [
            T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
            *([T.RandomHorizontalFlip()] if flip else []),
            _to_rgb,
        ]
    else:
        raise ValueError(f"data.augment.policy: expected 'crop_flip' or 'randaugment', got {policy!r}")
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def preprocess_id(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> str:
    """A string that changes whenever either default transform would produce different tensors (a cache key);
    a configured augmentation adds its own id (`tailprompt.data.augment.augment_id`)."""
    stats = ",".join(f"{v:.6g}" for v in (*mean, *std))
    lo, hi = TRAIN_CROP_SCALE
    return f"s{image_size}-bicubic-eval:resize+center-train:rrc{lo:g}-{hi:g}+hflip-norm:{stats}"
