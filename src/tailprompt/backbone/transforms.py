"""CLIP image preprocessing: PIL image -> normalised FloatTensor[3, S, S].

eval: resize the shorter side to S (bicubic) + center crop, as OpenAI's `clip.load` preprocess.
train: RandomResizedCrop(S, scale=(0.08, 1)) + horizontal flip, the CoOp/Dassl training augmentation
(``random_resized_crop`` + ``random_flip``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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


def train_transform(
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    crop_scale: tuple[float, float] = TRAIN_CROP_SCALE,
    flip: bool = True,
) -> Callable[[Any], Any]:
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
            *([T.RandomHorizontalFlip()] if flip else []),
            _to_rgb,
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def preprocess_id(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> str:
    """A string that changes whenever either transform would produce different tensors (a cache key)."""
    stats = ",".join(f"{v:.6g}" for v in (*mean, *std))
    lo, hi = TRAIN_CROP_SCALE
    return f"s{image_size}-bicubic-eval:resize+center-train:rrc{lo:g}-{hi:g}+hflip-norm:{stats}"
