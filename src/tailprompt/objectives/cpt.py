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

The partition is computed by the training loop once, before training (`needs_clusters`), with this
config's `cluster_settings()`: a fixed M or `"auto"` (best silhouette; `tailprompt.clustering` documents
the rule; `max_cluster_size` bounds the clusters, since silhouette alone tends to favour few large ones —
a third-party summary of CPT mentions clusters of "up to 16 prototypes"), and delivered to every step in
`StepState.clusters`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tailprompt.clustering import ClusterSettings
from tailprompt.objectives._shared import check_labels, class_feature_per_sample
from tailprompt.objectives.base import OBJECTIVES, Objective, ObjectiveContext, ObjectiveSpec, StepState, per_image_mean
from tailprompt.tensors import unit

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

    def cluster_settings(self) -> ClusterSettings:
        return ClusterSettings(self.n_clusters, self.cluster_seed, self.min_cluster_size, self.max_cluster_size)

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


def build_cpt(cfg: CPTConfig, context: ObjectiveContext) -> Objective:
    """CPT's three terms on the frozen partition the engine delivers in `StepState.clusters`."""

    def terms(state: StepState) -> dict[str, Tensor]:
        if state.clusters is None:
            raise ValueError("cpt: StepState.clusters is None; the objective declares needs_clusters, so the "
                             "training loop must compute the partition (see ClusterSettings)")
        return {
            "tetf": intra_cluster_etf_loss(state.text_feats, state.clusters),
            "cc": cross_modal_convergence_loss(state.image_feats, state.labels, state.text_feats),
            "rs": rotation_stability_loss(state.text_feats, state.frozen_text_feats),
        }

    return Objective(terms)


OBJECTIVES.register(
    "cpt",
    ObjectiveSpec(
        CPTConfig, build_cpt, default_weights={"tetf": 0.25, "cc": 0.15, "rs": 0.10}, needs_clusters=True
    ),
)
