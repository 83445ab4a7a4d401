"""Neural-collapse geometry of class text features and image features (NPT, CPT; Papyan et al. 2020).

All features are L2-normalised here and computed in float64; results are plain floats (None where a
quantity is undefined, e.g. no clusters given or fewer than two classes). Definitions, for class text
features g_1..g_K and their cosine matrix C (C_ij = cos(g_i, g_j)):

* `lcd` — NPT's language-modality collapse degree in absolute form, `mean_{i≠j} |C_ij - μ|` with
  `μ = -1/(K-1)`. NPT (Def. 2) writes the signed mean of `C_ij - μ`, which lets positive and negative
  deviations cancel (and equals `mean C_ij - μ`), so the absolute deviation is reported. 0 at an exact
  simplex ETF.
* `mean_cosine`, `std_cosine` — mean and population std of the off-diagonal cosines (NC2 diagnostic).
* `global_etf_gap` — the same deviation after centring the class features at their mean, i.e.
  Papyan's NC2 "max-angle" `mean_{i≠j} |cos(m_i, m_j) + 1/(K-1)|` with `m_i = g_i - mean_k g_k`. CLIP
  text features share a large common component (their cosines are far above 0), which dominates
  `lcd`; the centred gap measures whether the configuration itself is a simplex. 0 at an exact ETF.
* `cluster_etf_gap` — CPT's per-cluster target: for each cluster with k_m >= 2 classes,
  `mean_{i≠j in m} |C_ij + 1/(k_m - 1)|`, averaged over those clusters (each cluster weighs the same,
  like L_TETF's 1/M).
* `intra_cluster_cosine`, `inter_cluster_cosine` — mean C_ij over pairs i≠j in the same / different
  clusters.
* `effective_rank` — of C (Roy & Vetterli 2007): `exp(-Σ p_i log p_i)`, `p = σ / Σσ` the normalised
  singular values. K for orthonormal features, K - 1 for an exact simplex ETF, 1 when all coincide.

Image side, for normalised image features h with labels y (computed on a test split):

* `mid` — NPT's multi-modality isomorphism degree in absolute form, `mean_i (1 - cos(h_i, g_{y_i}))`
  (NPT's Def. 3 writes the signed `cos - 1`, always <= 0).
* `nc1` — Papyan's variability collapse `tr(Σ_W Σ_B⁺) / C` over the C classes present, with
  `Σ_W = 1/N Σ_i (h_i - μ_{y_i})(h_i - μ_{y_i})ᵀ`, `Σ_B = 1/C Σ_c (μ_c - μ_G)(μ_c - μ_G)ᵀ`, and the global
  mean `μ_G` the mean of all N features, as the reference implementations (tding1/Neural-Collapse
  `validate_NC.py`, nc-toolbox) take it; `global_mean="class_means"` (`eval.nc1_global_mean`) takes the
  mean of the class means instead, not dominated by large classes (the two are equal on a balanced split).
* `cdnv` — class-distance-normalised variance (Galanti et al. 2022), mean over class pairs of
  `(σ_c² + σ_c'²) / (2 ||μ_c - μ_c'||²)`, `σ_c² = mean_{i in c} ||h_i - μ_c||²`.
* `modality_gap` — `|| mean_i h_i - mean_k g_k ||`: distance between the centre of the image features
  (over all N images) and the centre of the K class text features (Liang et al. 2022).
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import Tensor

from tailprompt.tensors import unit


def _unit64(x: Tensor) -> Tensor:
    return unit(x.detach().to("cpu", torch.float64))


def effective_rank(matrix: Tensor) -> float:
    """`exp(entropy(σ / Σσ))` of the singular values σ of `matrix [K, K]` (Roy & Vetterli 2007)."""
    sigma = torch.linalg.svdvals(matrix.detach().to("cpu", torch.float64))
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()).item())


def _mean_abs_etf_deviation(cos: Tensor, mask: Tensor, target: float) -> float:
    return float((cos[mask] - target).abs().mean().item())


def text_geometry(text_feats: Tensor, clusters: Tensor | None = None) -> dict[str, float | None]:
    """Geometry of class text features `[K, D]` (learned or frozen), see the module docstring.

    Args:
        text_feats: `[K, D]` class features.
        clusters: optional LongTensor `[K]` of cluster ids (CPT's partition) for the cluster metrics.
    """
    g = _unit64(text_feats)
    num_classes = g.shape[0]
    out: dict[str, float | None] = dict.fromkeys(
        [
            "lcd",
            "mean_cosine",
            "std_cosine",
            "global_etf_gap",
            "effective_rank",
            "cluster_etf_gap",
            "intra_cluster_cosine",
            "inter_cluster_cosine",
        ]
    )
    cos = g @ g.T
    out["effective_rank"] = effective_rank(cos)
    if num_classes < 2:
        return out
    off = ~torch.eye(num_classes, dtype=torch.bool)
    mu = -1.0 / (num_classes - 1)
    out["lcd"] = _mean_abs_etf_deviation(cos, off, mu)
    out["mean_cosine"] = float(cos[off].mean().item())
    out["std_cosine"] = float(cos[off].std(unbiased=False).item())
    centred = unit(g - g.mean(0))
    out["global_etf_gap"] = _mean_abs_etf_deviation(centred @ centred.T, off, mu)
    if clusters is None:
        return out
    clusters = clusters.detach().cpu().long()
    if clusters.shape != (num_classes,):
        raise ValueError(f"clusters must be [K]=[{num_classes}], got shape {tuple(clusters.shape)}")
    same = clusters[:, None] == clusters[None, :]
    gaps = []
    for m in clusters.unique().tolist():
        members = (clusters == m).nonzero().squeeze(1)
        k = members.numel()
        if k >= 2:
            sub = cos[members][:, members]
            gaps.append(_mean_abs_etf_deviation(sub, ~torch.eye(k, dtype=torch.bool), -1.0 / (k - 1)))
    out["cluster_etf_gap"] = sum(gaps) / len(gaps) if gaps else None
    intra, inter = same & off, ~same
    out["intra_cluster_cosine"] = float(cos[intra].mean().item()) if intra.any() else None
    out["inter_cluster_cosine"] = float(cos[inter].mean().item()) if inter.any() else None
    return out


def image_geometry(image_feats: Tensor, labels: Tensor, text_feats: Tensor,
                   global_mean: Literal["samples", "class_means"] = "samples") -> dict[str, float | None]:
    """Collapse of image features `[N, D]` (labels `[N]`) and their alignment with class text `[K, D]`.

    Returns `mid`, `nc1`, `cdnv`, `modality_gap` (see the module docstring); nc1 and cdnv are None
    with fewer than two classes present.
    """
    h = _unit64(image_feats)
    g = _unit64(text_feats)
    y = labels.detach().cpu().long()
    if h.shape[0] != y.shape[0] or h.shape[0] == 0:
        raise ValueError(
            f"expected image_feats [N, D] and labels [N] with N > 0, got {tuple(h.shape)}, {tuple(y.shape)}"
        )
    out: dict[str, float | None] = {
        "mid": float((1.0 - (h * g[y]).sum(-1)).mean().item()),
        "nc1": None,
        "cdnv": None,
        "modality_gap": float((h.mean(0) - g.mean(0)).norm().item()),
    }
    present, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    n_present = present.numel()
    if n_present < 2:
        return out
    means = torch.zeros(n_present, h.shape[1], dtype=torch.float64).index_add_(0, inverse, h)
    means /= counts[:, None].to(torch.float64)
    within = h - means[inverse]  # [N, D]
    sigma_w = within.T @ within / h.shape[0]
    between = means - (h.mean(0) if global_mean == "samples" else means.mean(0))
    sigma_b = between.T @ between / n_present
    # Σ_B has rank <= C - 1; drop the numerically-zero directions instead of inverting noise
    sigma_b_pinv = torch.linalg.pinv(sigma_b, rtol=1e-10, hermitian=True)
    out["nc1"] = float(torch.trace(sigma_w @ sigma_b_pinv).item() / n_present)
    variances = torch.zeros(n_present, dtype=torch.float64).index_add_(0, inverse, (within**2).sum(-1))
    variances /= counts.to(torch.float64)
    ratios = [
        (variances[a] + variances[b]) / (2.0 * ((means[a] - means[b]) ** 2).sum().clamp(min=1e-12))
        for a, b in itertools.combinations(range(n_present), 2)
    ]
    out["cdnv"] = float(torch.stack(ratios).mean().item())
    return out
