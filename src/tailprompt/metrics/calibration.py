"""Calibration metrics and the post-hoc calibration baselines (design §8, calibration_and_longtail.md §1).

Conventions (TCPT's evaluator, so numbers compare with its tables): probabilities are the softmax of
the *scaled* logits (never raw cosines); the confidence of a sample is its top probability and its
prediction the argmax; ECE uses `n_bins` equal-width bins on [0, 1], a sample falls in bin j when
`lo_j < conf <= hi_j` (closed on the right, boundaries as `torch.linspace(0, 1, n_bins + 1)` in
float32), and the result is reported x100. torchmetrics bins `[lo, hi)` instead and skips the softmax
for inputs already in [0, 1], so it agrees only away from bin edges and when given probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tailprompt.metrics.classification import per_class_accuracy, top1_accuracy
from tailprompt.tensors import unit


def _top_label(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected probs [N, K] and labels [N], got {tuple(probs.shape)}, {tuple(labels.shape)}"
        )
    if probs.shape[0] == 0:
        raise ValueError("calibration metrics need at least one sample")
    if probs.dtype in (torch.float16, torch.bfloat16):  # bin edges need at least float32 resolution
        probs = probs.float()
    conf, pred = probs.detach().max(dim=1)
    return conf, (pred == labels.to(pred.device)).to(torch.float64)


def _equal_width_bins(conf: Tensor, n_bins: int) -> Tensor:
    """Bin id in 0..n_bins-1 with bins `(lo, hi]`; a confidence of exactly 0 joins the first bin."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32).to(conf.dtype).to(conf.device)
    return (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)


def _bin_stats(conf: Tensor, correct: Tensor, bins: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin counts, accuracy and mean confidence (float64; 0 in empty bins)."""
    bins = bins.cpu()
    counts = torch.bincount(bins, minlength=n_bins).to(torch.float64)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct.cpu())
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, conf.cpu().to(torch.float64))
    safe = counts.clamp(min=1)
    return counts, acc_sum / safe, conf_sum / safe


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 10) -> dict[str, list]:
    """Per-bin data for reliability diagrams: `bin_edges` (n_bins + 1), `counts`, `accuracy`, `confidence`.

    Accuracy and mean confidence are fractions in [0, 1]; they are 0.0 in empty bins (see `counts`).
    """
    conf, correct = _top_label(probs, labels)
    counts, acc, mean_conf = _bin_stats(conf, correct, _equal_width_bins(conf, n_bins), n_bins)
    return {
        "bin_edges": [i / n_bins for i in range(n_bins + 1)],
        "counts": [int(c) for c in counts.tolist()],
        "accuracy": acc.tolist(),
        "confidence": mean_conf.tolist(),
    }


def _gaps(probs: Tensor, labels: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    conf, correct = _top_label(probs, labels)
    counts, acc, mean_conf = _bin_stats(conf, correct, _equal_width_bins(conf, n_bins), n_bins)
    return counts / counts.sum(), (acc - mean_conf).abs()


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> float:
    """Top-label ECE x100: `Σ_j (n_j / N) |acc_j - conf_j|` over equal-width bins `(lo, hi]`.

    Args:
        probs: `[N, K]` class probabilities (softmax of the scaled logits).
        labels: `[N]` true classes.
        n_bins: number of equal-width confidence bins (10 in TCPT's tables).
    """
    weight, gap = _gaps(probs, labels, n_bins)
    return float((weight * gap).sum().item() * 100.0)


def max_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10, weighted: bool = True) -> float:
    """MCE x100 over the ECE bins.

    `weighted=True` (default) is TCPT's evaluator: the largest *bin-weighted* gap
    `max_j (n_j / N) |acc_j - conf_j|`, so sparsely populated bins count little. `weighted=False` is the
    textbook MCE (Naeini et al. 2015): `max_j |acc_j - conf_j|` over non-empty bins.
    """
    weight, gap = _gaps(probs, labels, n_bins)
    values = weight * gap if weighted else gap[weight > 0]
    return float(values.max().item() * 100.0)


def adaptive_ece(probs: Tensor, labels: Tensor, n_bins: int = 10) -> float:
    """Adaptive (equal-mass) ECE x100.

    Bin edges are the confidence quantiles at 0, 1/n, ..., 1 (linear interpolation, like the
    `KBinsDiscretizer(strategy="quantile")` of TCPT's evaluator), and, as there, an edge at most 1e-8
    above the one before it is dropped (its bin merges with the next: tied top confidences, e.g. many
    samples at 1.0); a sample on an inner edge goes to the upper bin, so tied confidences share a bin.
    Then `Σ_j (n_j / N) |acc_j - conf_j|`.
    """
    conf, correct = _top_label(probs, labels)
    conf64 = conf.to(torch.float64)
    edges = torch.quantile(conf64, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=conf.device))
    edges = _distinct_edges(edges)
    n_kept = len(edges) - 1
    bins = torch.searchsorted(edges[1:-1].contiguous(), conf64, right=True).clamp(0, max(n_kept - 1, 0))
    counts, acc, mean_conf = _bin_stats(conf64, correct, bins, max(n_kept, 1))
    return float(((counts / counts.sum()) * (acc - mean_conf).abs()).sum().item() * 100.0)


def _distinct_edges(edges: Tensor, gap: float = 1e-8) -> Tensor:
    """`edges` without each one at most `gap` above its predecessor (sklearn's quantile binning)."""
    keep = torch.cat([edges.new_ones(1, dtype=torch.bool), torch.diff(edges) > gap])
    return edges[keep]


def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean NLL (nats) of the softmax of `logits [N, K]` (scaled, as used for ECE) at `labels [N]`."""
    return float(F.cross_entropy(logits.detach().to(torch.float64), labels.to(logits.device)).item())


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100, max_factor: float = 100.0) -> float:
    """Post-hoc temperature scaling (Guo et al. 2017): `T = argmin_T NLL(softmax(logits / T))`.

    One parameter fitted with L-BFGS from T = 1 on held-out `logits [N, K]` (already scaled by
    logit_scale; TCPT's fixed alternative is T = 1.16 for ViT). Accuracy is unchanged by T. T is
    searched in `(1 / max_factor, max_factor)` through `log T = log(max_factor) * tanh(u)`: a held-out
    set that is all correct drives the unbounded optimum to T -> 0 and a chance-level one to T -> inf,
    and a few-shot validation split can be either.
    """
    z = logits.detach().to("cpu", torch.float64)
    y = labels.detach().to("cpu")
    bound = math.log(max_factor)
    u = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / torch.exp(bound * torch.tanh(u)), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(torch.exp(bound * torch.tanh(u.detach())).item())


def fit_logit_scale_sgd(
    cos: Tensor, labels: Tensor, epoch_lrs: Sequence[float], batch_size: int = 100, init: float = 4.6052,
    momentum: float = 0.9, weight_decay: float = 5e-4,
) -> float:
    """Temperature scaling as the DAC repository trains it (`trainers/calibration/tempscaling.py`): a log
    scale `s` (from ln 100) replaces CLIP's, logits `exp(s) * cos`, cross-entropy, SGD with momentum and
    weight decay over sequential batches of `cos [N, K]` (cosines, in the held-out items' order), one
    learning rate per epoch (`epoch_lrs`, Dassl's schedule). Returns the learned scale `exp(s)`; the
    equivalent temperature of logits scaled by CLIP's own scale `c` is `c / exp(s)`. Not the NLL optimum:
    it stops where 20 epochs of SGD leave it.
    """
    s = torch.nn.Parameter(torch.tensor(init, dtype=torch.float32))
    opt = torch.optim.SGD([s], lr=epoch_lrs[0] if epoch_lrs else 0.0, momentum=momentum, weight_decay=weight_decay)
    z = cos.detach().to("cpu", torch.float32)
    y = labels.detach().to("cpu")
    with torch.enable_grad():
        for lr in epoch_lrs:
            for group in opt.param_groups:
                group["lr"] = lr
            for start in range(0, z.shape[0], batch_size):
                loss = F.cross_entropy(s.exp() * z[start : start + batch_size], y[start : start + batch_size])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return float(s.detach().exp().item())


def dac_logit_scaling(
    base_zeroshot: Tensor,
    current_zeroshot: Tensor,
    base_tuned: Tensor,
    current_tuned: Tensor,
    k: int = 5,
    base_threshold: float = 0.05,
) -> Tensor:
    """DAC (Wang et al., ICML 2024) per-class logit factors, as its public code computes them.

    Reference: `ml-stat-Sustech/CLIP_Calibration:trainers/calibration/distanse_aware_calibration.py`.

    For each current class c: `s_zs(c) = exp(-Σ(k smallest ||C_zs[c] - B_zs||) / k)`, the same `s_ft(c)`
    with the tuned features, and `w(c) = s_ft(c) / s_zs(c)`, except `w(c) = 1` when the nearest tuned
    base feature is closer than `base_threshold` (the class is a base class). The reference divides by
    k even when fewer than k base classes exist; so does this. Features are L2-normalised here.

    Args:
        base_zeroshot: `[Nb, D]` zero-shot text features of the base (training) classes.
        current_zeroshot: `[K, D]` zero-shot text features of the evaluated classes.
        base_tuned: `[Nb, D]` tuned text features of the base classes.
        current_tuned: `[K, D]` tuned text features of the evaluated classes.

    Returns:
        `[K]` factors; apply with `apply_dac_scaling`.
    """

    def score(current: Tensor, base: Tensor) -> tuple[Tensor, Tensor]:
        dist = torch.cdist(
            unit(current.detach().to(torch.float64)),
            unit(base.detach().to(torch.float64)),
            compute_mode="donot_use_mm_for_euclid_dist",  # exact small distances for the base test
        )
        nearest = dist.topk(min(k, dist.shape[1]), dim=1, largest=False).values  # ascending
        return torch.exp(-nearest.sum(dim=1) / k), nearest[:, 0]

    s_zs, _ = score(current_zeroshot, base_zeroshot)
    s_ft, closest = score(current_tuned, base_tuned)
    return torch.where(closest < base_threshold, torch.ones_like(s_ft), s_ft / s_zs)


def apply_dac_scaling(logits: Tensor, factors: Tensor) -> Tensor:
    """Multiply each row of `logits [N, K]` by the factor of its predicted class (argmax unchanged)."""
    return logits * factors.to(logits.device, logits.dtype)[logits.argmax(dim=1)][:, None]


def split_metrics(
    logits: Tensor, labels: Tensor, classnames: Sequence[str], n_bins: int = 10
) -> dict[str, Any]:
    """One split's block of result.json, minus the temperature / DAC fields the engine adds.

    Args:
        logits: `[N, K]` scaled logits of the split's test images against its K classes.
        labels: `[N]` true classes.
        classnames: the K class names in label order.

    Returns:
        `classnames`, `accuracy` (%), `per_class_accuracy` {name: % or None without samples},
        `ece`, `mce` (TCPT's weighted form), `aece` (all x100), `nll` and `reliability`.
    """
    logits = logits.detach().float()
    labels = labels.detach().to(logits.device)
    if logits.shape[1] != len(classnames):
        raise ValueError(f"logits have {logits.shape[1]} classes but {len(classnames)} class names")
    probs = logits.softmax(dim=1)
    per_class = per_class_accuracy(logits.argmax(dim=1), labels, len(classnames))
    return {
        "classnames": list(classnames),
        "accuracy": top1_accuracy(logits, labels),
        "per_class_accuracy": {
            name: (None if math.isnan(v) else v) for name, v in zip(classnames, per_class.tolist())
        },
        "ece": expected_calibration_error(probs, labels, n_bins),
        "mce": max_calibration_error(probs, labels, n_bins),
        "aece": adaptive_ece(probs, labels, n_bins),
        "nll": negative_log_likelihood(logits, labels),
        "reliability": reliability_bins(probs, labels, n_bins),
    }
