"""Accuracy metrics: top-1, per-class, harmonic mean, and head/medium/tail groups by shot count."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

GROUP_NAMES = ("head", "medium", "tail")
THRESHOLD_GROUP_NAMES = ("many", "medium", "few")


def top1_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent: `mean(argmax_k logits[i] == labels[i]) * 100` for `[N, K]`, `[N]`."""
    if labels.numel() == 0:
        raise ValueError("top1_accuracy: no samples")
    return float((logits.argmax(dim=1) == labels).double().mean().item() * 100.0)


def per_class_accuracy(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Accuracy of each class in percent, `[K]` float64; NaN for a class with no samples.

    Args:
        preds: `[N]` predicted class ids (argmax of the logits).
        labels: `[N]` true class ids in 0..K-1.
        num_classes: K.
    """
    labels = labels.long().cpu()
    correct = (preds.long().cpu() == labels).double()
    totals = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, correct)
    acc = hits / totals * 100.0
    return torch.where(totals > 0, acc, torch.full_like(acc, float("nan")))


def harmonic_mean(a: float, b: float) -> float:
    """`2ab / (a + b)` (base/new HM of the base-to-new protocol); 0 when both are 0."""
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def shot_groups(counts: Sequence[int]) -> dict[str, list[int]]:
    """Head / medium / tail class indices of the training label set.

    Classes are sorted by shot count, descending, ties by label order, then cut into three contiguous
    groups as `numpy.array_split` does (the first groups take the remainder: 10 classes -> 4/3/3).
    """
    order = sorted(range(len(counts)), key=lambda k: (-int(counts[k]), k))
    parts = np.array_split(np.array(order, dtype=np.int64), len(GROUP_NAMES))
    return {name: [int(k) for k in part] for name, part in zip(GROUP_NAMES, parts)}


def threshold_groups(counts: Sequence[int], many: int = 100, few: int = 20) -> dict[str, list[int]]:
    """Many / medium / few-shot class indices as real long-tail benchmarks report them.

    ImageNet-LT, Places-LT and iNaturalist 2018 (Liu et al. 2019, and LIFT/Decoder after them): "many"
    > `many` training images, "few" < `few`, "medium" in between, under those names (the benchmarks'
    tables say many / medium / few, not head / tail); classes in label order within each group.
    """
    names = THRESHOLD_GROUP_NAMES
    groups: dict[str, list[int]] = {name: [] for name in names}
    for k, n in enumerate(counts):
        name = names[0] if n > many else names[2] if n < few else names[1]
        groups[name].append(k)
    return groups


def group_accuracy(per_class: Tensor, groups: Mapping[str, Sequence[int]]) -> dict[str, float | None]:
    """Mean per-class accuracy inside each group (classes without test samples skipped).

    Returns None for a group with no measured class (e.g. fewer than 3 training classes).
    """
    out: dict[str, float | None] = {}
    for name, idx in groups.items():
        values = [float(per_class[k]) for k in idx if not math.isnan(float(per_class[k]))]
        out[name] = sum(values) / len(values) if values else None
    return out
