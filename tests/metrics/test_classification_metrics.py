"""Top-1, per-class and grouped accuracy, harmonic mean."""

from __future__ import annotations

import math

import pytest
import torch

from tailprompt.metrics import group_accuracy, harmonic_mean, per_class_accuracy, shot_groups, top1_accuracy


def test_top1_accuracy_percent():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0]])
    assert top1_accuracy(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx(75.0)
    with pytest.raises(ValueError):
        top1_accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_per_class_accuracy_with_an_unseen_class():
    preds = torch.tensor([0, 0, 1, 2, 2])
    labels = torch.tensor([0, 1, 1, 2, 0])
    acc = per_class_accuracy(preds, labels, num_classes=4)
    assert acc[:3].tolist() == pytest.approx([50.0, 50.0, 100.0])
    assert math.isnan(acc[3].item())


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_shot_groups_sort_by_count_then_label_and_split_like_numpy():
    counts = [16, 4, 16, 1, 8, 2, 1, 4, 16, 1]
    groups = shot_groups(counts)
    # sorted: 16s (0, 2, 8), 8 (4), 4s (1, 7), 2 (5), 1s (3, 6, 9); array_split 10 -> 4/3/3
    assert groups == {"head": [0, 2, 8, 4], "medium": [1, 7, 5], "tail": [3, 6, 9]}
    assert shot_groups([3, 3]) == {"head": [0], "medium": [1], "tail": []}


def test_group_accuracy_means_per_class_values():
    per_class = torch.tensor([100.0, 50.0, float("nan"), 0.0])
    groups = {"head": [0, 1], "medium": [2, 3], "tail": []}
    assert group_accuracy(per_class, groups) == {"head": 75.0, "medium": 0.0, "tail": None}


def test_threshold_groups_follow_the_long_tail_benchmarks_rule():
    from tailprompt.metrics import threshold_groups

    groups = threshold_groups([500, 101, 100, 20, 19, 1])
    assert groups == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
