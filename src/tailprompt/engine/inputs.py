"""Where image inputs come from: the on-disk feature cache, or the image tower run on the spot."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tailprompt.backbone import FrozenVLM
from tailprompt.data.augment import COOP_AUGMENT, Augment, train_transform
from tailprompt.data.features import FeatureCache, compute_features
from tailprompt.data.loading import image_batches
from tailprompt.data.types import DatasetSplits, Item
from tailprompt.tensors import unit


@dataclass
class ImageInputs:
    """Gives L2-normalised frozen image features for items, cached (`cache` set) or computed now."""

    backbone: FrozenVLM
    cache: FeatureCache | None
    device: torch.device
    batch_size: int = 256
    num_workers: int = 0  # image-decoding processes (0: decode in this process)
    augment: Augment = COOP_AUGMENT  # training augmentation (cached views >= 1 and exact-mode batches)

    def features(self, dataset: DatasetSplits, items: Sequence[Item], view: int = 0, shard: Any = None) -> Tensor:
        """[N, D] normalised features of `items` for `view` (0 = eval preprocessing).

        `shard`: torchrun's process group, every rank calling with the same items; each encodes a share
        of the cache misses.
        """
        if not items:
            return torch.zeros(0, self.backbone.embed_dim, device=self.device)
        if self.cache is not None:
            feats = self.cache.get(self.backbone, dataset, list(items), view=view, batch_size=self.batch_size,
                                   shard=shard, augment=self.augment)
            return unit(feats.to(self.device))
        assert view == 0, "uncached features exist for the eval view only; training augments per step"
        # The data layer's no-cache path: the same fp32 encoding the cache stores, so both modes agree.
        feats = compute_features(self.backbone, dataset, list(items), 0, self.batch_size, num_workers=self.num_workers)
        return unit(feats.to(self.device))

    def train_views(self, dataset: DatasetSplits, items: Sequence[Item], n_views: int, shard: Any = None) -> Tensor:
        """[V, N, D] normalised features of `n_views` cached augmented views (views 1..V)."""
        return torch.stack([self.features(dataset, items, view=v, shard=shard) for v in range(1, n_views + 1)])

    def image_batches(
        self, dataset: DatasetSplits, items: Sequence[Item], batch_size: int, train_seed: tuple | None = None
    ) -> Iterator[Tensor]:
        """Consecutive batches `[b, 3, S, S]` of `items` on the device.

        `train_seed` None: eval preprocessing. Otherwise training augmentation, each image's drawn from
        torch's RNG seeded by `train_seed + (item key,)`, so the tensors do not depend on `num_workers`.
        """
        tf = train_transform(self.backbone, self.augment) if train_seed is not None else self.backbone.preprocess_eval
        parts = ("train", *train_seed) if train_seed is not None else None
        for images in image_batches(dataset, items, tf, parts, batch_size, self.num_workers):
            yield images.to(self.device)
