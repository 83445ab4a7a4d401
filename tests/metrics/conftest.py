"""Shared builders for the metric tests."""

from __future__ import annotations

import pytest
import torch


def simplex_etf(num: int, dim: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """`[num, dim]` rows of an exact simplex ETF `sqrt(K/(K-1)) U (I - 11ᵀ/K)`, U orthonormal, dim >= num."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, num, generator=gen, dtype=dtype))
    centring = torch.eye(num, dtype=dtype) - torch.full((num, num), 1.0 / num, dtype=dtype)
    return (torch.sqrt(torch.tensor(num / (num - 1), dtype=dtype)) * u @ centring).T


@pytest.fixture
def etf():
    return simplex_etf
