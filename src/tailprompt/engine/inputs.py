"""Where image inputs come from: the on-disk feature cache, or the image tower run on the spot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tailprompt.data.types import DatasetSplits, Item
from tailprompt.engine.steps import autocast_for, normalized


@dataclass
class ImageInputs:
    """Gives L2-normalised frozen image features for items, cached (`cache` set) or computed now."""

    backbone: torch.nn.Module
    cache: object | None  # tailprompt.data.features.FeatureCache
    device: torch.device
    batch_size: int = 256

    def features(self, dataset: DatasetSplits, items: Sequence[Item], view: int = 0) -> Tensor:
        """[N, D] normalised features of `items` for `view` (0 = eval preprocessing)."""
        if not items:
            return torch.zeros(0, self.backbone.embed_dim, device=self.device)
        if self.cache is not None:
            feats = self.cache.get(self.backbone, dataset, list(items), view=view, batch_size=self.batch_size)
            return normalized(feats.to(self.device))
        assert view == 0, "uncached features exist for the eval view only; training augments per step"
        chunks = []
        for start in range(0, len(items), self.batch_size):
            images = self.images(dataset, items[start : start + self.batch_size], train=False)
            with torch.no_grad(), autocast_for(self.device):
                chunks.append(normalized(self.backbone.encode_image(images)))
        return torch.cat(chunks)

    def train_views(self, dataset: DatasetSplits, items: Sequence[Item], n_views: int) -> Tensor:
        """[V, N, D] normalised features of `n_views` cached augmented views (views 1..V)."""
        return torch.stack([self.features(dataset, items, view=v) for v in range(1, n_views + 1)])

    def images(self, dataset: DatasetSplits, items: Sequence[Item], train: bool) -> Tensor:
        """[B, 3, S, S] preprocessed images (fresh augmentation when `train`)."""
        tf = self.backbone.preprocess_train if train else self.backbone.preprocess_eval
        return dataset.load_batch(list(items), tf).to(self.device)
