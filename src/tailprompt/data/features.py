"""On-disk cache of frozen image-tower features, so no image is encoded twice (design.md §5).

A cached feature is the raw `backbone.encode_image` output (fp32, not normalised) of one image under
one view, keyed by

* the backbone's `identity` (architecture + weights hash), `preprocess_id`, `precision` (the towers'
  autocast: bf16 features differ from fp32 ones in the 4th digit) and the training augmentation when it is
  not the CoOp recipe (`tailprompt.data.augment`) -> a *space* folder,
* the view index -> a sub-folder (view 0 = eval preprocessing; view v >= 1 = the training
  augmentation, with torch's RNG seeded from (v, item key) inside a forked RNG, so a cached
  augmented view is reproducible and the caller's global RNG is neither used nor advanced),
* the image: `dataset.image_identity(item)` (files: resolved path + size + mtime_ns, see
  `tailprompt.data.files.FileImages`; generated images: generator spec + seed + index) and `item.key`.

Layout: `<root>/features/<space hash>/view<v>/<uuid>.safetensors`, each shard one tensor `features`
`[n, D]` with the entry keys in its metadata; `<root>/features/<space hash>/key.json` says what the
hash stands for. Shards are written whole to a temporary file and renamed (`atomic_path`), so a
crash leaves no half file. One process at a time fills a view folder (`<space>/.view<v>.fill.lock`, see
`tailprompt.locks`); others wait, re-read the folder and compute only what is still missing, so concurrent
jobs on one dataset encode each image once. Safetensors never executes code on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from tailprompt.backbone.precision import autocast_context
from tailprompt.data.augment import COOP_AUGMENT, Augment, augment_id, train_transform
from tailprompt.data.loading import image_batches
from tailprompt.data.seeding import derived_seed
from tailprompt.data.types import DatasetSplits, Item
from tailprompt.locks import exclusive
from tailprompt.utils import default_cache_dir, stable_hash, write_json_atomic, write_safetensors_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the meaning of a cached entry changes


def augmentation_seed(view: int, key: str) -> int:
    """Torch seed of training view `view` of the image with item key `key`."""
    return derived_seed("view", view, key)


def view_transform(backbone: Any, view: int, augment: Augment = COOP_AUGMENT) -> tuple[Any, tuple | None]:
    """(transform, seed parts) of a view: eval preprocessing for 0, seeded training augmentation for v >= 1."""
    if view == 0:
        return backbone.preprocess_eval, None
    return train_transform(backbone, augment), ("view", view)


def view_batch(
    backbone: Any, dataset: DatasetSplits, items: Sequence[Item], view: int, augment: Augment = COOP_AUGMENT
) -> torch.Tensor:
    """Preprocessed images of one view -> [B, 3, S, S].

    View 0 uses `backbone.preprocess_eval`; view v >= 1 applies `backbone.preprocess_train` with
    torch's RNG seeded by `augmentation_seed(v, item.key)` inside `torch.random.fork_rng`, so the
    result does not depend on (nor change) the global RNG state.
    """
    transform, seed_parts = view_transform(backbone, view, augment)
    return next(image_batches(dataset, items, transform, seed_parts, batch_size=max(1, len(items))))


def view_batches(
    backbone: Any,
    dataset: DatasetSplits,
    items: Sequence[Item],
    view: int,
    batch_size: int,
    num_workers: int,
    augment: Augment = COOP_AUGMENT,
) -> Iterator[torch.Tensor]:
    """`view_batch` over consecutive chunks of `items`, decoded by `num_workers` processes when > 0."""
    transform, seed_parts = view_transform(backbone, view, augment)
    return image_batches(dataset, items, transform, seed_parts, batch_size, num_workers)


def backbone_precision(backbone: Any) -> str:
    """The precision the backbone's towers run in (`fp32` for objects without a policy)."""
    return str(getattr(backbone, "precision", "fp32"))


# Images per image-tower call on a CPU: throughput is flat beyond a few images there, while activations
# grow with the batch (a ViT-B/16 cache fill of 180-image batches peaked at 2.6 GB RSS). Accelerators take
# the whole batch.
CPU_ENCODE_CHUNK = 16


@torch.no_grad()
def encode_batch(backbone: Any, images: torch.Tensor) -> torch.Tensor:
    """`backbone.encode_image` on the backbone's device and dtype, in its precision -> fp32 CPU [B, D]."""
    dtype = getattr(backbone, "dtype", None)
    device = torch.device(getattr(backbone, "device", "cpu"))
    chunk = len(images) if device.type != "cpu" else CPU_ENCODE_CHUNK
    out = []
    for start in range(0, len(images), max(1, chunk)):
        part = images[start : start + chunk].to(device=device)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            part = part.to(dtype)
        with autocast_context(device, backbone_precision(backbone)):
            out.append(backbone.encode_image(part).float().cpu())
    return torch.cat(out) if out else torch.empty(0, int(backbone.embed_dim))


def compute_features(
    backbone: Any,
    dataset: DatasetSplits,
    items: Sequence[Item],
    view: int,
    batch_size: int = 256,
    progress: bool = False,
    num_workers: int = 0,
    augment: Augment = COOP_AUGMENT,
) -> torch.Tensor:
    """Encode `items` under `view` without any cache (the exact no-cache path) -> fp32 [N, D]."""
    chunks = []
    bar = tqdm(total=len(items), unit="img", desc=f"{dataset.name} view {view}", disable=not progress)
    for images in view_batches(backbone, dataset, items, view, batch_size, num_workers, augment):
        chunks.append(encode_batch(backbone, images))
        bar.update(len(images))
    bar.close()
    if not chunks:
        return torch.empty(0, int(backbone.embed_dim))
    return torch.cat(chunks)


def space_key(backbone: Any, augment: Augment = COOP_AUGMENT) -> dict[str, Any]:
    """What a cache space's hash stands for. fp32 adds no field, so caches filled before the precision
    policy existed (all fp32) stay valid; bf16 features live in their own space. Likewise the CoOp recipe
    adds no field (`preprocess_id` already names it); another augmentation does."""
    key: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "backbone": backbone.identity,
        "preprocess": backbone.preprocess_id,
    }
    if backbone_precision(backbone) != "fp32":
        key["precision"] = backbone_precision(backbone)
    if getattr(backbone, "quick_gelu_folded", False):  # bf16 numbers of the folded MLPs (fold_quick_gelu)
        key["activation"] = "silu-folded"
    if augment != COOP_AUGMENT:
        key["augment"] = augment_id(augment)
    return key


class FeatureCache:
    """Image features on disk; `get` returns cached rows and computes (and stores) the rest.

    `hits` / `misses` count distinct images looked up over the cache's lifetime. Misses are decoded by
    `num_workers` processes while the tower encodes the previous batch, encoded `batch_size` at a time
    in the backbone's precision, and shown on a progress bar (images/s) when `progress` is set.
    """

    def __init__(
        self, root: str | os.PathLike[str] | None = None, num_workers: int = 0, progress: bool = False
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.num_workers = num_workers  # image-decoding processes for misses (0: in this process)
        self.progress = progress  # default of `get(progress=...)`
        self.hits = 0
        self.misses = 0
        self._index: dict[Path, dict[str, tuple[str, int]]] = {}  # view dir -> entry -> (shard, row)
        self._scanned: dict[Path, set[str]] = {}

    def space_dir(self, backbone: Any, augment: Augment = COOP_AUGMENT) -> Path:
        """The folder for one (backbone identity, preprocessing, precision, training augmentation) tuple."""
        return self.root / "features" / stable_hash(space_key(backbone, augment), 16)

    @staticmethod
    def entry_key(dataset: DatasetSplits, item: Item) -> str:
        """Digest of the image's identity and key (a changed file gives a new identity, hence a miss)."""
        blob = f"{dataset.image_identity(item)}\n{item.key}".encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def get(
        self,
        backbone: Any,
        dataset: DatasetSplits,
        items: Sequence[Item],
        view: int,
        batch_size: int = 256,
        progress: bool | None = None,
        shard: Any = None,
        augment: Augment = COOP_AUGMENT,
    ) -> torch.Tensor:
        """Features of `items` under `view` -> fp32 [N, D] in `items` order (raw `encode_image` output).

        Only images missing from the cache are decoded and encoded; `progress` None uses the cache's default.
        `shard`: a process group (`rank`, `world_size`, `barrier()`; tailprompt.engine.distributed) whose
        ranks all call `get` with the same items: each encodes its share of the misses, then all read them.
        `augment` is the training augmentation of views >= 1 (view 0, the eval view, is the same under any).
        """
        if view < 0:
            raise ValueError(f"view must be >= 0, got {view}")
        entries = [self.entry_key(dataset, it) for it in items]
        space = self.space_dir(backbone, augment)
        view_dir = space / f"view{view}"
        if shard is not None:
            shard.barrier()  # the ranks look at the folder at the same moment, so they agree on the misses
        index = self._refresh(view_dir)
        first_item = {}
        for e, it in zip(entries, items):
            first_item.setdefault(e, it)
        missing = [e for e in first_item if e not in index]
        fresh: dict[str, torch.Tensor] = {}  # what this process encoded (its misses)
        show = self.progress if progress is None else progress
        if shard is not None:  # the ranks of one job share the misses; every rank reaches the barrier
            if missing:
                self._write_key_file(space, backbone, augment)
                mine = missing[shard.rank :: shard.world_size]
                fresh = self._compute_and_store(backbone, dataset, view, view_dir, mine, first_item, batch_size,
                                                show, augment)
            shard.barrier()
            index = self._refresh(view_dir)
            missing = [e for e in first_item if e not in index and e not in fresh]
        if missing:
            # One writer per view folder: concurrent jobs wait, then reuse its shards (each image encoded once).
            with exclusive(view_dir.parent / f".view{view}.fill.lock", waiting=f"waiting for another job "
                           f"filling the feature cache {view_dir}"):
                index = self._refresh(view_dir)
                missing = [e for e in first_item if e not in index and e not in fresh]
                if missing:
                    self._write_key_file(space, backbone, augment)
                    fresh.update(self._compute_and_store(
                        backbone, dataset, view, view_dir, missing, first_item, batch_size, show, augment
                    ))
        self.hits += len(first_item) - len(fresh)
        self.misses += len(fresh)
        return self._gather(backbone, view_dir, entries, fresh)

    def _compute_and_store(
        self,
        backbone: Any,
        dataset: DatasetSplits,
        view: int,
        view_dir: Path,
        missing: list[str],
        first_item: dict[str, Item],
        batch_size: int,
        progress: bool,
        augment: Augment,
    ) -> dict[str, torch.Tensor]:
        fresh: dict[str, torch.Tensor] = {}
        bar = tqdm(
            total=len(missing),
            unit="img",  # the rate reads images/s
            desc=f"features {dataset.name} view {view} ({backbone_precision(backbone)})",
            disable=not progress,
        )
        batches = view_batches(
            backbone, dataset, [first_item[e] for e in missing], view, batch_size, self.num_workers, augment
        )
        for start, images in zip(range(0, len(missing), batch_size), batches):
            batch = missing[start : start + batch_size]
            feats = encode_batch(backbone, images)
            self._write_shard(
                view_dir, batch, feats
            )  # one shard per batch: an interrupted run keeps its work
            fresh.update(zip(batch, feats))
            bar.update(len(batch))
        bar.close()
        return fresh

    def _write_shard(self, view_dir: Path, entries: list[str], feats: torch.Tensor) -> None:
        name = f"{uuid.uuid4().hex}.safetensors"
        write_safetensors_atomic(view_dir / name, {"features": feats.contiguous()}, {"entries": json.dumps(entries)},
                                 "feature cache shard")
        index = self._index.setdefault(view_dir, {})
        for row, e in enumerate(entries):
            index.setdefault(e, (name, row))
        self._scanned.setdefault(view_dir, set()).add(name)

    def _write_key_file(self, space: Path, backbone: Any, augment: Augment) -> None:
        path = space / "key.json"
        if not path.exists():
            write_json_atomic(path, {**space_key(backbone, augment), "precision": backbone_precision(backbone)})

    def _refresh(self, view_dir: Path) -> dict[str, tuple[str, int]]:
        """Index shards written since the last look (by this or another process)."""
        index = self._index.setdefault(view_dir, {})
        scanned = self._scanned.setdefault(view_dir, set())
        if not view_dir.is_dir():
            return index
        for path in sorted(view_dir.glob("*.safetensors")):
            if path.name in scanned or path.name.startswith("."):
                continue
            scanned.add(path.name)
            try:
                with safe_open(str(path), framework="pt") as f:
                    entries = json.loads((f.metadata() or {})["entries"])
            except Exception as e:  # a foreign or damaged file must not break a run: recompute instead
                log.warning("feature cache: ignoring unreadable shard %s (%s)", path, e)
                continue
            for row, entry in enumerate(entries):
                index.setdefault(entry, (path.name, row))
        return index

    def _gather(
        self, backbone: Any, view_dir: Path, entries: list[str], fresh: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        index = self._index[view_dir]
        rows: dict[str, torch.Tensor] = dict(fresh)
        by_shard: dict[str, list[str]] = {}
        for e in dict.fromkeys(entries):
            if e not in rows:
                by_shard.setdefault(index[e][0], []).append(e)
        for shard, shard_entries in by_shard.items():
            with safe_open(str(view_dir / shard), framework="pt") as f:
                table = f.get_tensor("features")
            rows.update((e, table[index[e][1]]) for e in shard_entries)
        if not entries:
            return torch.empty(0, int(backbone.embed_dim))
        return torch.stack([rows[e] for e in entries]).float()
