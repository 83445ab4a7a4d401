"""Every registered objective: term names, both text-feature shapes, and where gradients flow."""

from __future__ import annotations

import pytest
import torch

import tailprompt.objectives  # noqa: F401  (registers everything)
from tailprompt.config import from_dict
from tailprompt.objectives import OBJECTIVES

EXPECTED = {
    "cross_entropy": {"ce": 1.0},
    "kgcoop": {"guidance": 8.0},
    "cpt": {"tetf": 0.25, "cc": 0.15, "rs": 0.10},
    "npt": {"lc": 0.3, "mi": 0.8},
    "tcpt": {"margin": 1.0, "moment": 5.0},
    "global_etf": {"etf": 0.25},
    "zsnorm": {"ce": 1.0},
    "penalty": {"penalty": 10.0},
}
K, D, B = 6, 8, 5


def test_all_objectives_registered_with_their_default_weights():
    assert set(EXPECTED) <= set(OBJECTIVES.names())
    for name, weights in EXPECTED.items():
        assert OBJECTIVES.get(name).default_weights == weights, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("conditioned", [False, True], ids=["KD", "BKD"])
def test_terms_are_finite_scalars_and_only_learned_features_get_gradients(name, conditioned, state_factory):
    gen = torch.Generator().manual_seed(0)
    frozen_text = torch.randn(K, D, generator=gen)
    shape = (B, K, D) if conditioned else (K, D)
    learned_text = (frozen_text + 0.3 * torch.randn(*shape, generator=gen)).requires_grad_(True)
    images = torch.randn(B, D, generator=gen, requires_grad=True)
    frozen_images = torch.randn(B, D, generator=gen, requires_grad=True)
    frozen_text.requires_grad_(True)
    labels = torch.tensor([0, 1, 1, 4, 5])
    state = state_factory(learned_text, frozen_text, images, labels, frozen_image_feats=frozen_images)
    spec = OBJECTIVES.get(name)
    context = {"frozen_text_feats": frozen_text.detach(), "classnames": [f"c{i}" for i in range(K)]}
    terms = spec.build(from_dict(spec.config_cls, {}), context)(state)
    assert set(terms) == set(spec.default_weights)
    for term, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, term)
    sum(spec.default_weights[k] * v for k, v in terms.items()).backward()
    assert frozen_text.grad is None and frozen_images.grad is None
    assert learned_text.grad is not None and learned_text.grad.abs().sum() > 0
