"""Prototype sets with known semantic groups, for the clustering and CPT tests."""

from __future__ import annotations

import torch


def grouped_prototypes(group_sizes, dim=16, noise=0.05, seed=0):
    """Classes around well-separated orthogonal directions: the true partition is known."""
    gen = torch.Generator().manual_seed(seed)
    rows, truth = [], []
    for gid, size in enumerate(group_sizes):
        centre = torch.zeros(dim)
        centre[gid] = 1.0
        for _ in range(size):
            rows.append(centre + noise * torch.randn(dim, generator=gen))
            truth.append(gid)
    return torch.stack(rows), truth


def same_partition(a, b):
    a, b = list(a), list(b)
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))
