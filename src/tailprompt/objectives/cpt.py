"""CPT: Cluster-aware neural-collapse Prompt Tuning (CVPR 2026; seeds/000, design §3).

    L = L_CE + 0.25 * L_TETF + 0.15 * L_CC + 0.10 * L_RS

Before training, K-means on the frozen class prototypes `ĝ_c` (the backbone's text features of the
dataset's zero-shot template, as KgCoOp and TCPT use) gives a partition `π: class -> cluster` that
stays fixed. Then, per step, with `g_c` the learned class features and `f_i` the image features
(all L2-normalised here, whatever the caller passes):

* `L_TETF = 1/M Σ_m || C_m + 1/(k_m - 1) (11ᵀ - I) ||_F²`, `C_m` the cosine matrix of the k_m learned
  prototypes of cluster m. The diagonal of `C_m` is 1 and `(11ᵀ - I)` is zero there, so each cluster
  adds the constant k_m (no gradient) and only off-diagonal cosines are pushed to the simplex value
  `-1/(k_m - 1)`. A one-class cluster has no pair: `(11ᵀ - I)` is the 1x1 zero matrix, it adds the
  constant 1 and no gradient. M counts every cluster (the paper's 1/M).
* `L_CC = mean over classes c present in the batch of mean_i || f_{c,i} - g_c ||²` (squared
  Euclidean distance summed over the D dimensions).
* `L_RS = 1/K Σ_c || g_c - ĝ_c ||_1` (L1 summed over the D dimensions, on normalised features: the
  paper does not say, and the unnormalised text-tower output has an arbitrary scale).

Instance-conditioned learners (CoCoOp) give `text_feats [B, K, D]`: L_TETF and L_RS are computed per
image on that image's class features and averaged (`per_image_mean`); L_CC pairs image b with its
own conditioned class feature `text_feats[b, y_b]`.

Choosing M (`n_clusters`): an integer fixes it; `"auto"` (the default) runs K-means for candidate
M in [2, K // 2] (every integer when that range has at most 24 values, else 24 values spaced
geometrically) and keeps the M with the best silhouette score (Euclidean on the normalised
prototypes, the geometry K-means optimises) among partitions whose clusters all hold at least
`min_cluster_size` (2) classes, so that every class takes part in some ETF, and, when
`max_cluster_size` is set, at most that many (a third-party summary of CPT mentions clusters of "up
to 16 prototypes"; silhouette alone tends to favour few large clusters). If no candidate meets the
upper bound, the candidates whose largest cluster is smallest are kept; if none meets the lower
bound, all candidates are. With K < 4 there is no candidate and all classes form one cluster.
K-means is scikit-learn's (k-means++, n_init=10, random_state = `cluster_seed` = 0), never the run
seed, so the partition is identical for every run seed. Cluster ids are renumbered in order of first
appearance in class order.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tailprompt.objectives._shared import check_labels, class_feature_per_sample, unit
from tailprompt.objectives.base import OBJECTIVES, ObjectiveSpec, StepState, per_image_mean

log = logging.getLogger(__name__)

KMEANS_N_INIT = 10  # design §8: n_init >= 10, so one unlucky k-means++ start cannot pick the partition
AUTO_MAX_CANDIDATES = 24  # bounds the auto search (K = 1000 would otherwise need 499 K-means runs)


# ----------------------------------------------------------------------------- clustering


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


# ----------------------------------------------------------------------------- losses


def _etf_deviation(text_feats: Tensor, clusters: Tensor, diagonal: bool) -> Tensor:
    """L_TETF for one set of class features `[K, D]` (no host sync: sizes come from the pair mask)."""
    g = unit(text_feats)
    num_classes = g.shape[0]
    clusters = clusters.to(g.device)
    if clusters.shape != (num_classes,):
        raise ValueError(f"clusters must be [K]=[{num_classes}], got shape {tuple(clusters.shape)}")
    cos = g @ g.T  # [K, K]
    same = clusters[:, None] == clusters[None, :]
    k = same.sum(dim=1).to(g.dtype)  # [K] size k_m of each class's cluster
    n_clusters = (1.0 / k).sum()  # each cluster contributes k_m * (1 / k_m) = 1
    inv = 1.0 / (k - 1.0).clamp(min=1.0)  # 1/(k_m - 1); singletons have no pairs, clamp avoids inf
    pairs = same & ~torch.eye(num_classes, dtype=torch.bool, device=g.device)
    off = ((cos + inv[:, None]) ** 2 * pairs).sum()
    # each cluster's diagonal adds k_m (unit self-cosine): Σ_m k_m = K, a constant with no gradient
    const = float(num_classes) if diagonal else 0.0
    return (off + const) / n_clusters


def intra_cluster_etf_loss(text_feats: Tensor, clusters: Tensor, diagonal: bool = True) -> Tensor:
    """CPT's L_TETF = 1/M Σ_m || C_m + (1/(k_m-1)) (11ᵀ - I) ||_F².

    Args:
        text_feats: learned class features `[K, D]` or `[B, K, D]` (per image, averaged).
        clusters: LongTensor `[K]`, cluster id of each class (e.g. from `semantic_clusters`).
        diagonal: keep the paper's constant diagonal contribution (Σ_m k_m / M = K / M); False gives
            only the off-diagonal deviation, which is 0 at an exact per-cluster simplex ETF.

    Returns:
        A scalar. One-class clusters add no gradient (they have no pair).
    """
    return per_image_mean(text_feats, lambda t: _etf_deviation(t, clusters, diagonal))


def cross_modal_convergence_loss(image_feats: Tensor, labels: Tensor, text_feats: Tensor) -> Tensor:
    """CPT's L_CC = 1/|C_B| Σ_{c ∈ C_B} 1/N_c Σ_i || f_{c,i}/|f_{c,i}| - g_c/|g_c| ||².

    Args:
        image_feats: `[B, D]` image features (normalised here); gradients reach them (MaPLe).
        labels: `[B]` class of each image; C_B = the classes present in the batch.
        text_feats: `[K, D]`, or `[B, K, D]` where image b is paired with `text_feats[b, y_b]`.
    """
    check_labels(labels, image_feats.shape[0])
    f = unit(image_feats)
    g = unit(class_feature_per_sample(text_feats, labels))
    dist = ((f - g) ** 2).sum(-1)  # [B]
    # per-class sums over a fixed [K] buffer: no data-dependent shapes, so no host sync on an accelerator
    num_classes = text_feats.shape[-2]
    counts = torch.zeros(num_classes, dtype=dist.dtype, device=dist.device).index_add(
        0, labels, torch.ones_like(dist)
    )
    sums = torch.zeros(num_classes, dtype=dist.dtype, device=dist.device).index_add(0, labels, dist)
    return (sums / counts.clamp(min=1.0)).sum() / (counts > 0).sum()


def rotation_stability_loss(text_feats: Tensor, frozen_text_feats: Tensor) -> Tensor:
    """CPT's L_RS = 1/K Σ_c || g_c - ĝ_c ||_1 on normalised features.

    Args:
        text_feats: learned `[K, D]` or `[B, K, D]` (per image, averaged).
        frozen_text_feats: `[K, D]` frozen prototypes; a constant (no gradient).
    """
    frozen = unit(frozen_text_feats.detach())
    return per_image_mean(text_feats, lambda t: (unit(t) - frozen).abs().sum(-1).mean())


# ----------------------------------------------------------------------------- registered objective


@dataclass
class CPTConfig:
    n_clusters: int | str = "auto"  # fixed M, or "auto" (best silhouette under the size rules)
    min_cluster_size: int = 2  # "auto" only: smallest cluster wanted
    max_cluster_size: int | None = None  # "auto" only: largest cluster wanted (None = no bound)
    cluster_seed: int = 0  # K-means random_state; never the run seed

    def __post_init__(self) -> None:
        if isinstance(self.n_clusters, str) and self.n_clusters != "auto":
            raise ValueError(f"n_clusters: expected 'auto' or a positive integer, got {self.n_clusters!r}")
        if isinstance(self.n_clusters, int) and self.n_clusters < 1:
            raise ValueError(f"n_clusters: expected a positive integer, got {self.n_clusters}")
        if self.min_cluster_size < 1:
            raise ValueError(f"min_cluster_size: expected >= 1, got {self.min_cluster_size}")
        if self.max_cluster_size is not None and self.max_cluster_size < self.min_cluster_size:
            raise ValueError(
                f"max_cluster_size: expected >= min_cluster_size ({self.min_cluster_size}), "
                f"got {self.max_cluster_size}"
            )


def _log_clusters(result: ClusterResult, classnames: list[str] | None) -> None:
    log.info("CPT clusters: M=%d, sizes %s (%s)", result.n_clusters, result.sizes, result.criterion)
    if classnames is not None and len(classnames) == result.assignment.numel():
        for m in range(result.n_clusters):
            members = [n for n, c in zip(classnames, result.assignment.tolist()) if c == m]
            log.debug("CPT cluster %d: %s", m, ", ".join(members))


def build_cpt(cfg: CPTConfig, context: dict[str, Any]):
    """Cluster `context["frozen_text_feats"]` once and return the step function.

    The partition is recorded in `context["record"]["clusters"]`. Without frozen features in the
    context, `StepState.clusters` is used, or else the first step's `frozen_text_feats` are clustered.
    `context["select_clusters"]`, when given, replaces `select_clusters` (the engine passes a version
    memoised on disk, since `auto` is expensive for hundreds of classes).
    """
    record = context.setdefault("record", {})
    fixed: dict[str, Tensor] = {}
    select = context.get("select_clusters", select_clusters)

    def cluster(frozen: Tensor) -> None:
        result = select(
            frozen, cfg.n_clusters, cfg.cluster_seed, cfg.min_cluster_size, cfg.max_cluster_size
        )
        fixed["cpu"] = result.assignment
        record["clusters"] = result.record()
        _log_clusters(result, context.get("classnames"))

    if context.get("frozen_text_feats") is not None:
        cluster(context["frozen_text_feats"])

    def clusters_for(state: StepState) -> Tensor:
        if "cpu" not in fixed:
            if state.clusters is not None:
                return state.clusters
            cluster(state.frozen_text_feats)
        key = str(state.text_feats.device)
        if key not in fixed:  # one host->device copy per device, not per step
            fixed[key] = fixed["cpu"].to(state.text_feats.device)
        return fixed[key]

    def terms(state: StepState) -> dict[str, Tensor]:
        clusters = clusters_for(state)
        return {
            "tetf": intra_cluster_etf_loss(state.text_feats, clusters),
            "cc": cross_modal_convergence_loss(state.image_feats, state.labels, state.text_feats),
            "rs": rotation_stability_loss(state.text_feats, state.frozen_text_feats),
        }

    return terms


OBJECTIVES.register(
    "cpt",
    ObjectiveSpec(
        CPTConfig, build_cpt, default_weights={"tetf": 0.25, "cc": 0.15, "rs": 0.10}, needs_clusters=True
    ),
)
