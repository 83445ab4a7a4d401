"""Shared test setup: one torch thread per test process (the machines have 2 cores)."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("TAILPROMPT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/tailprompt from tests."""
    monkeypatch.setenv("TAILPROMPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
