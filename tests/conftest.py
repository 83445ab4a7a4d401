"""Shared test setup: one torch thread per test process (the machines have 2 cores)."""

import os
from pathlib import Path

import pytest
import torch

from tailprompt.testing.trees import make_eurosat_tree

torch.set_num_threads(int(os.environ.get("TAILPROMPT_TEST_THREADS", "1")))


def simplex_etf(num: int, dim: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """`[num, dim]` rows of an exact simplex ETF `sqrt(K/(K-1)) U (I - 11ᵀ/K)`, U orthonormal, dim >= num."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, num, generator=gen, dtype=dtype))
    centring = torch.eye(num, dtype=dtype) - torch.full((num, num), 1.0 / num, dtype=dtype)
    return (torch.sqrt(torch.tensor(num / (num - 1), dtype=dtype)) * u @ centring).T


@pytest.fixture(scope="session")
def eurosat_root(tmp_path_factory) -> Path:
    """A mini EuroSAT tree in the CoOp layout (10 classes); the folder holding `eurosat/`."""
    root = tmp_path_factory.mktemp("data")
    make_eurosat_tree(root, images_per_class=20)
    return root


@pytest.fixture
def etf():
    """The exact simplex-ETF builder (metric and objective tests)."""
    return simplex_etf


@pytest.fixture(scope="session", autouse=True)
def _fp32_by_default():
    """`backbone.precision: auto` resolves to fp32 on a CPU in tests, whatever this CPU can do.

    Results of the suite (exactness, parity with the references) must not depend on the machine; the
    precision tests ask for bf16 explicitly or patch the detector back. Session-scoped so that it is in
    place before the session-scoped backbone fixtures are built.
    """
    from tailprompt.backbone import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_has_native_bf16", lambda: False)
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/tailprompt from tests."""
    monkeypatch.setenv("TAILPROMPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
