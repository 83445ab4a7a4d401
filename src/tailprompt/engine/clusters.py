"""K-means partitions of frozen class prototypes, memoised on disk.

`auto` clustering runs K-means for up to 24 values of M (about 2 minutes for 500 classes), and every
run of a sweep on the same dataset and backbone would repeat it. The partition depends only on the
frozen features and the clustering settings, so it is stored under `<cache>/clusters/<hash>.json`,
written by one job while concurrent jobs wait for it (`<hash>.lock`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tailprompt.clustering import ClusterResult, ClusterSettings
from tailprompt.locks import exclusive
from tailprompt.utils import stable_hash, write_json_atomic


class ClusterCache:
    """`ClusterSettings.select`, reading and writing JSON records under `root` (None: no memo)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root / "clusters" if root is not None else None
        self.hits = 0

    def __call__(self, frozen_text_feats: Tensor, settings: ClusterSettings) -> ClusterResult:
        if self.root is None:
            return settings.select(frozen_text_feats)
        key = [settings.n_clusters, settings.seed, settings.min_cluster_size, settings.max_cluster_size]
        digest = hashlib.sha256(frozen_text_feats.detach().to("cpu", torch.float32).numpy().tobytes()).hexdigest()
        path = self.root / f"{stable_hash({'features': digest, 'settings': key}, 24)}.json"
        stored = self._read(path)
        if stored is not None:
            return stored
        # One writer per entry: concurrent jobs wait for it and reuse the partition it stored.
        with exclusive(path.with_suffix(".lock"), waiting=f"waiting for another job clustering into {path}"):
            stored = self._read(path)
            if stored is not None:
                return stored
            result = settings.select(frozen_text_feats)
            write_json_atomic(path, {**result.record(), "silhouettes": result.silhouettes})
        return result

    def _read(self, path: Path) -> ClusterResult | None:
        if not path.is_file():
            return None
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            silhouettes = {int(k): float(v) for k, v in data.get("silhouettes", {}).items()}
            result = ClusterResult(torch.tensor(data["assignment"], dtype=torch.long), data["criterion"], silhouettes)
        except (json.JSONDecodeError, KeyError, ValueError):
            return None  # a damaged entry is recomputed and overwritten
        self.hits += 1
        return result
