"""K-means partitions of frozen prototypes: the auto rule, its bounds, and independence of the run seed."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from clustering_fixtures import grouped_prototypes, same_partition
from tailprompt.clustering import auto_candidates, select_clusters, semantic_clusters


def test_auto_clusters_recover_semantic_groups_and_report_criterion():
    protos, truth = grouped_prototypes([3, 4, 3])
    result = select_clusters(protos, "auto")
    assert result.n_clusters == 3
    assert same_partition(result.assignment.tolist(), truth)
    assert sorted(result.sizes) == [3, 3, 4]
    assert "silhouette" in result.criterion and "M=3" in result.criterion
    assert set(result.silhouettes) == set(auto_candidates(10)) == {2, 3, 4, 5}
    # ids renumbered by first appearance in class order
    assert result.assignment.tolist()[0] == 0
    record = result.record()
    assert record == {
        "n_clusters": 3,
        "assignment": result.assignment.tolist(),
        "sizes": result.sizes,
        "criterion": result.criterion,
    }


def test_partition_is_identical_for_any_run_seed():
    protos, _ = grouped_prototypes([4, 4, 4], noise=0.4, seed=7)  # overlapping groups: K-means has choices
    partitions = []
    for run_seed in (1, 2, 3):
        random.seed(run_seed)
        np.random.seed(run_seed)
        torch.manual_seed(run_seed)
        partitions.append(semantic_clusters(protos, "auto").tolist())
        partitions.append(semantic_clusters(protos, 4).tolist())
    assert partitions[0::2] == [partitions[0]] * 3
    assert partitions[1::2] == [partitions[1]] * 3


def test_auto_keeps_clusters_of_at_least_two_classes():
    protos, _ = grouped_prototypes([3, 3, 1], noise=0.02)  # the lone class is an outlier
    result = select_clusters(protos, "auto")
    assert min(result.sizes) >= 2
    assert result.n_clusters >= 2


def test_max_cluster_size_bounds_auto_partition():
    # two groups of 6 classes spread evenly along a segment: silhouette prefers M=2 (sizes 6, 6)
    offsets = torch.linspace(-0.3, 0.3, 6)
    rows = [torch.eye(8)[0] + o * torch.eye(8)[2] for o in offsets]
    rows += [torch.eye(8)[1] + o * torch.eye(8)[3] for o in offsets]
    protos = torch.stack(rows)
    assert select_clusters(protos, "auto").sizes == [6, 6]
    bounded = select_clusters(protos, "auto", max_cluster_size=3)
    assert bounded.assignment.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert "[2, 3]" in bounded.criterion
    # an unreachable bound keeps the candidates closest to it instead of ignoring it
    tight = select_clusters(protos, "auto", min_cluster_size=2, max_cluster_size=2)
    assert max(tight.sizes) <= max(bounded.sizes) and min(tight.sizes) >= 2


def test_fixed_and_degenerate_cluster_counts():
    protos, _ = grouped_prototypes([2, 2, 2])
    assert select_clusters(protos, 1).assignment.tolist() == [0] * 6
    assert select_clusters(protos, 6).n_clusters == 6
    tiny = select_clusters(protos[:3], "auto")
    assert tiny.assignment.tolist() == [0, 0, 0] and "one cluster" in tiny.criterion
    with pytest.raises(ValueError, match="n_clusters"):
        select_clusters(protos, 7)
    with pytest.raises(ValueError, match="n_clusters"):
        select_clusters(protos, "many")


def test_auto_candidates_are_bounded():
    assert auto_candidates(3) == []
    assert auto_candidates(9) == [2, 3, 4]
    big = auto_candidates(1000)
    assert len(big) <= 24 and big[0] == 2 and big[-1] == 500 and big == sorted(set(big))
