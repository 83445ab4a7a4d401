"""K-means partitions of frozen class prototypes (CPT's semantic clusters; also used by the geometry metrics).

Choosing M (`n_clusters`): an integer fixes it; `"auto"` runs K-means for candidate M in [2, K // 2] (every
integer when that range has at most 24 values, else 24 values spaced geometrically) and keeps the M with the
best silhouette score (Euclidean on the normalised prototypes, the geometry K-means optimises) among
partitions whose clusters all hold at least `min_cluster_size` (2) classes, and, when `max_cluster_size` is
set, at most that many. If no candidate meets the upper bound, the candidates whose largest cluster is
smallest are kept; if none meets the lower bound, all candidates are. With K < 4 there is no candidate and
all classes form one cluster. K-means is scikit-learn's (k-means++, n_init=10, random_state = `seed` = 0),
never the run seed, so the partition is identical for every run seed. Cluster ids are renumbered in order of
first appearance in class order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from tailprompt.tensors import unit

KMEANS_N_INIT = 10  # design §8: n_init >= 10, so one unlucky k-means++ start cannot pick the partition
AUTO_MAX_CANDIDATES = 24  # bounds the auto search (K = 1000 would otherwise need 499 K-means runs)


@dataclass
class ClusterResult:
    """A frozen class partition: `assignment [K]` (cluster id per class) and how M was chosen."""

    assignment: Tensor  # LongTensor [K], ids 0..M-1 in order of first appearance
    criterion: str
    silhouettes: dict[int, float] = field(default_factory=dict)  # candidate M -> score (auto only)

    @property
    def n_clusters(self) -> int:
        return int(self.assignment.max().item()) + 1 if self.assignment.numel() else 0

    @property
    def sizes(self) -> list[int]:
        return torch.bincount(self.assignment, minlength=self.n_clusters).tolist()

    def record(self) -> dict[str, Any]:
        """The `clusters` block of result.json (assignment as a list in class order)."""
        return {
            "n_clusters": self.n_clusters,
            "assignment": self.assignment.tolist(),
            "sizes": self.sizes,
            "criterion": self.criterion,
        }


def _first_appearance_ids(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster labels 0, 1, ... in order of first appearance (sklearn's ids are arbitrary)."""
    mapping: dict[int, int] = {}
    for lab in labels.tolist():
        mapping.setdefault(lab, len(mapping))
    return np.array([mapping[lab] for lab in labels.tolist()], dtype=np.int64)


def _kmeans(points: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_clusters, init="k-means++", n_init=KMEANS_N_INIT, random_state=seed)
    with warnings.catch_warnings():
        # duplicate prototypes (e.g. repeated class names) make sklearn warn about fewer distinct clusters
        warnings.simplefilter("ignore")
        labels = km.fit_predict(points)
    return _first_appearance_ids(labels)


def auto_candidates(num_classes: int) -> list[int]:
    """Candidate M for `"auto"`: [2, K // 2], thinned geometrically to at most 24 values."""
    hi = num_classes // 2
    if hi < 2:
        return []
    if hi - 1 <= AUTO_MAX_CANDIDATES:
        return list(range(2, hi + 1))
    grid = np.unique(np.round(np.geomspace(2, hi, AUTO_MAX_CANDIDATES)).astype(int))
    return [int(m) for m in grid]


def select_clusters(
    frozen_text_feats: Tensor,
    n_clusters: int | str = "auto",
    seed: int = 0,
    min_cluster_size: int = 2,
    max_cluster_size: int | None = None,
) -> ClusterResult:
    """K-means partition of the frozen class prototypes, with the rule that chose M.

    Args:
        frozen_text_feats: `[K, D]` frozen class features (normalised here).
        n_clusters: a fixed M in [1, K], or `"auto"` (best silhouette, see the module docstring).
        seed: K-means `random_state`; a constant (0), deliberately not the run seed.
        min_cluster_size: `"auto"` prefers partitions whose clusters all have at least this many classes.
        max_cluster_size: `"auto"` prefers partitions whose clusters all have at most this many
            classes (None: no upper bound).
    """
    if frozen_text_feats.dim() != 2:
        raise ValueError(f"frozen_text_feats must be [K, D], got shape {tuple(frozen_text_feats.shape)}")
    num_classes = frozen_text_feats.shape[0]
    points = unit(frozen_text_feats.detach().to("cpu", torch.float64)).numpy()
    if isinstance(n_clusters, str):
        if n_clusters != "auto":
            raise ValueError(f"n_clusters: expected 'auto' or an integer, got {n_clusters!r}")
        return _auto_clusters(points, seed, min_cluster_size, max_cluster_size)
    if not 1 <= n_clusters <= num_classes:
        raise ValueError(f"n_clusters: expected an integer in [1, K={num_classes}], got {n_clusters}")
    if n_clusters == 1:
        labels = np.zeros(num_classes, dtype=np.int64)
    else:
        labels = _kmeans(points, n_clusters, seed)
    return ClusterResult(torch.from_numpy(labels), f"fixed: n_clusters={n_clusters}")


def _auto_clusters(
    points: np.ndarray, seed: int, min_cluster_size: int, max_cluster_size: int | None
) -> ClusterResult:
    from sklearn.metrics import silhouette_score

    num_classes = points.shape[0]
    candidates = auto_candidates(num_classes)
    if not candidates:
        return ClusterResult(
            torch.zeros(num_classes, dtype=torch.long),
            f"auto: K={num_classes} < 4 leaves no M in [2, K//2]; one cluster",
        )
    scores: dict[int, float] = {}
    partitions: dict[int, np.ndarray] = {}
    for m in candidates:
        labels = _kmeans(points, m, seed)
        if len(np.unique(labels)) < 2:  # all prototypes identical
            continue
        scores[m] = float(silhouette_score(points, labels, metric="euclidean"))
        partitions[m] = labels
    if not scores:
        return ClusterResult(
            torch.zeros(num_classes, dtype=torch.long), "auto: prototypes indistinguishable; one cluster"
        )
    smallest = {m: int(np.bincount(labels).min()) for m, labels in partitions.items()}
    largest = {m: int(np.bincount(labels).max()) for m, labels in partitions.items()}
    pool = [m for m in scores if smallest[m] >= min_cluster_size]
    rule = f"clusters >= {min_cluster_size} classes"
    if not pool:
        pool, rule = list(scores), f"no M gave clusters >= {min_cluster_size} classes; any sizes"
    elif max_cluster_size is not None:
        bounded = [m for m in pool if largest[m] <= max_cluster_size]
        rule = f"cluster sizes in [{min_cluster_size}, {max_cluster_size}]"
        if not bounded:  # get as close to the bound as the candidates allow
            closest = min(largest[m] for m in pool)
            bounded = [m for m in pool if largest[m] == closest]
            rule = f"clusters >= {min_cluster_size} classes, none <= {max_cluster_size}: largest {closest}"
        pool = bounded
    best = max(pool, key=lambda m: (scores[m], -m))  # ties -> fewer clusters
    criterion = (
        f"auto: best silhouette {scores[best]:.4f} at M={best} over M in "
        f"{candidates[0]}..{candidates[-1]} ({len(candidates)} candidates), {rule}"
    )
    return ClusterResult(torch.from_numpy(partitions[best]), criterion, scores)


def semantic_clusters(
    frozen_text_feats: Tensor,
    n_clusters: int | str = "auto",
    seed: int = 0,
    min_cluster_size: int = 2,
    max_cluster_size: int | None = None,
) -> Tensor:
    """CPT's frozen semantic partition: `[K, D]` frozen prototypes -> LongTensor `[K]` cluster ids.

    Run once before training; independent of the run seed (`seed` is K-means' own, default 0).
    See `select_clusters` for the criterion that chose M.
    """
    return select_clusters(frozen_text_feats, n_clusters, seed, min_cluster_size, max_cluster_size).assignment


@dataclass(frozen=True)
class ClusterSettings:
    """How a partition is chosen; objectives that need clusters expose theirs (`cluster_settings()`)."""

    n_clusters: int | Literal["auto"] = "auto"
    seed: int = 0
    min_cluster_size: int = 2
    max_cluster_size: int | None = None

    def select(self, frozen_text_feats: Tensor) -> ClusterResult:
        return select_clusters(
            frozen_text_feats, self.n_clusters, self.seed, self.min_cluster_size, self.max_cluster_size
        )
