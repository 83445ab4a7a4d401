"""Records shared by the data layer: one image item, one dataset with its splits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from tailprompt.data.augment import Augment

if TYPE_CHECKING:  # torch is imported where tensors are made: listing datasets and presets needs no torch
    import torch


@dataclass(frozen=True)
class Item:
    """One labelled image.

    `key` identifies the image inside its dataset: for files, the path relative to the dataset
    folder (what split files and `fewshot_ids` JSON use); for generated images, a string such as
    `world:<spec>:<seed>:<index>`. `label` is in the dataset's current label space.
    """

    key: str
    label: int
    classname: str
    domain: str = ""


@dataclass
class DatasetSplits:
    """A dataset after reading: class list, template and the three splits.

    `load_image(item) -> PIL.Image` (RGB) opens or renders one image; `image_identity(item) -> str`
    is the feature cache's key part for the image (path + fingerprint, or generator spec + index).
    """

    name: str
    classnames: list[str]
    template: str  # zero-shot template with one "{}" for the class name
    train: list[Item]
    val: list[Item]
    test: list[Item]
    root: Path | None
    load_image: Callable[[Item], Image.Image]
    image_identity: Callable[[Item], str]
    templates: Sequence[str] = field(default_factory=tuple)  # optional ensemble templates
    domain: str = ""
    augment: Augment | None = None  # default training augmentation; None: the CoOp recipe
    # Per-class sentences ({classname: [sentence, ...]}, CoPrompt's `gpt_file` format) when the reader has them
    # (the embedded world writes its own from class attributes); otherwise runs read `data.descriptions`.
    descriptions: dict[str, list[str]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def load_batch(self, items: Sequence[Item], transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
        """Stack `transform(load_image(item))` over items -> [B, 3, H, W]."""
        import torch

        return torch.stack([transform(self.load_image(it)) for it in items])
