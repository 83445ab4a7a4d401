"""Fixtures for the backbone tests: one tiny random ViT CLIP per session and fixed inputs."""

from __future__ import annotations

import pytest
import torch

from tailprompt.backbone import load_backbone

from .helpers import PROMPTS


@pytest.fixture(scope="session")
def tiny():
    return load_backbone("tiny-vit")


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def tokens(tiny) -> torch.Tensor:
    return tiny.tokenize(PROMPTS)
