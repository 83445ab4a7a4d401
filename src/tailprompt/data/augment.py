"""Training-view augmentation as data: what `RandomResizedCrop` keeps and whether views flip.

The CoOp/Dassl recipe (``random_resized_crop`` with scale (0.08, 1) + ``random_flip``) is the default for
every dataset that does not name its own, and it runs through the backbone's own `preprocess_train`, so
runs on the real datasets are unchanged bit for bit. A dataset can carry a gentler default
(`DatasetSplits.augment`): the embedded world's 32 px objects do not survive a crop that keeps 8% of the
image. `data.augment` in a run config overrides both. The resolved augmentation is part of the feature-cache
key (only when it is not the CoOp recipe, so existing caches stay valid) and of result.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Augment:
    """`crop_flip`: RandomResizedCrop(S, scale=crop_scale, ratio 3/4-4/3, bicubic), then a horizontal flip
    (p = 0.5) if `flip`. `randaugment`: resize to S x S and Dassl's RandAugment (n 2, m 10; CoPrompt's
    `INPUT.TRANSFORMS`), no crop or flip (`backbone/transforms.py`)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)  # fraction of the image area a crop keeps (min, max)
    flip: bool = True
    policy: Literal["crop_flip", "randaugment"] = "crop_flip"

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {list(self.crop_scale)}")


COOP_AUGMENT = Augment()


def resolve_augment(configured: Augment | None, dataset_default: Augment | None) -> Augment:
    """The run's augmentation: the config's if set, else the dataset's default, else the CoOp recipe."""
    return configured or dataset_default or COOP_AUGMENT


def augment_id(augment: Augment) -> str:
    """A short name that changes whenever the augmented tensors would (part of cache keys)."""
    if augment.policy == "randaugment":
        return "resize+randaugment2,10"
    lo, hi = augment.crop_scale
    return f"rrc{lo:g}-{hi:g}" + ("+hflip" if augment.flip else "")


def train_transform(backbone: Any, augment: Augment) -> Callable[[Any], Any]:
    """PIL -> FloatTensor[3, S, S] training view of `backbone` under `augment`.

    The CoOp recipe is the backbone's own `preprocess_train` (the exact transform runs used before
    augmentation was configurable); any other goes through `backbone.train_preprocess`.
    """
    if augment == COOP_AUGMENT:
        return backbone.preprocess_train
    return backbone.train_preprocess(augment.crop_scale, augment.flip, augment.policy)
