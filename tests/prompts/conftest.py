"""Shared fixtures for the learner tests: one tiny random ViT CLIP per session, small label spaces."""

from __future__ import annotations

import pytest
import torch

from tailprompt.backbone import load_backbone
from tailprompt.prompts import LEARNERS, build_learner

# Names with different BPE lengths (1, 2 after "_" -> " ", 3 tokens) so class-token layouts differ.
CLASSNAMES = ["cat", "golden_retriever", "sea or lake"]
OTHER_CLASSNAMES = ["tree", "red car"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="session")
def backbone():
    return load_backbone("tiny-vit")


@pytest.fixture(scope="session")
def images(backbone) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, backbone.image_size, backbone.image_size, generator=g)


def build(name: str, backbone, classnames=CLASSNAMES, seed: int = 0, **overrides):
    """Build learner `name` with its default config plus `overrides`, under `torch.manual_seed(seed)`."""
    torch.manual_seed(seed)
    return build_learner(name, LEARNERS.get(name).config_cls(**overrides), backbone, list(classnames), TEMPLATE)
