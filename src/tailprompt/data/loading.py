"""Preprocessed image batches, optionally decoded in worker processes, with per-image seeded augmentation.

Every augmented image is drawn with torch's RNG seeded from explicit parts (e.g. the view index and the
image key) inside `fork_rng`, so the result depends neither on the global RNG nor on which worker
process decoded it: `num_workers` changes speed, never the tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tailprompt.data.seeding import derived_seed
from tailprompt.data.types import DatasetSplits, Item

Transform = Callable[[Image.Image], torch.Tensor]


def seeded_transform(image: Image.Image, transform: Transform, seed: int | None) -> torch.Tensor:
    """`transform(image)`, with torch's RNG seeded by `seed` (None: a deterministic transform)."""
    if seed is None:
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


class PreprocessedImages(Dataset):
    """`items[i]` loaded from `dataset` and transformed; augmentation seeded by `seed_parts + (item.key,)`."""

    def __init__(
        self, dataset: DatasetSplits, items: Sequence[Item], transform: Transform, seed_parts: tuple | None
    ) -> None:
        self.dataset, self.items, self.transform, self.seed_parts = dataset, list(items), transform, seed_parts

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        seed = None if self.seed_parts is None else derived_seed(*self.seed_parts, item.key)
        return seeded_transform(self.dataset.load_image(item), self.transform, seed)


def image_batches(
    dataset: DatasetSplits,
    items: Sequence[Item],
    transform: Transform,
    seed_parts: tuple | None,
    batch_size: int,
    num_workers: int = 0,
) -> Iterator[torch.Tensor]:
    """Batches `[b, 3, S, S]` of `items` in order; `num_workers > 0` decodes in that many processes."""
    images = PreprocessedImages(dataset, items, transform, seed_parts)
    if num_workers <= 0 or len(items) <= batch_size:
        for start in range(0, len(images), batch_size):
            yield torch.stack([images[i] for i in range(start, min(start + batch_size, len(images)))])
        return
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    yield from loader
