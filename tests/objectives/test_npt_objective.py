"""NPT: L_LC and L_MI against hand-worked cases, both reductions, instance-conditioned features."""

from __future__ import annotations

import pytest
import torch

from tailprompt.objectives import OBJECTIVES
from tailprompt.objectives.npt import language_collapse_loss, modality_isomorphism_loss

from .conftest import build_terms


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_lc_hand_worked():
    g = t([[1.0, 0.0], [0.0, 2.0]])  # cos 0, μ = -1 -> (0 + 1)^2 on each of the 2 ordered pairs
    assert language_collapse_loss(g).item() == pytest.approx(1.0)
    assert language_collapse_loss(g, reduction="sum").item() == pytest.approx(2.0)
    g3 = t([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # cos 1, 0, 0; μ = -1/2
    # pairs: (1 + .5)^2 twice, (0 + .5)^2 four times -> 4.5 + 1 = 5.5 over 6 pairs
    assert language_collapse_loss(g3, reduction="sum").item() == pytest.approx(5.5)
    assert language_collapse_loss(g3).item() == pytest.approx(5.5 / 6)


def test_lc_is_zero_at_simplex_etf(etf):
    assert language_collapse_loss(etf(8, 12)).item() == pytest.approx(0.0, abs=1e-12)


def test_lc_needs_two_classes_and_valid_reduction():
    with pytest.raises(ValueError, match="2 classes"):
        language_collapse_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="reduction"):
        language_collapse_loss(torch.randn(3, 4), reduction="max")


def test_mi_hand_worked():
    g = t([[1.0, 0.0], [0.0, 1.0]])
    f = t([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    labels = torch.tensor([0, 1, 1])
    # cos = 1, 1/sqrt(2), -1 -> (0)^2 + (1/sqrt2 - 1)^2 + (-2)^2
    expected_sum = (2**-0.5 - 1) ** 2 + 4.0
    assert modality_isomorphism_loss(f, labels, g, reduction="sum").item() == pytest.approx(expected_sum)
    assert modality_isomorphism_loss(f, labels, g).item() == pytest.approx(expected_sum / 3)


def test_instance_conditioned_features():
    gen = torch.Generator().manual_seed(0)
    per_image = torch.randn(3, 5, 4, generator=gen)
    f = torch.randn(3, 4, generator=gen)
    labels = torch.tensor([4, 0, 4])
    lc = sum(language_collapse_loss(per_image[b]) for b in range(3)) / 3
    assert language_collapse_loss(per_image).item() == pytest.approx(lc.item(), rel=1e-6)
    cos = torch.nn.functional.cosine_similarity(f, per_image[torch.arange(3), labels], dim=-1)
    assert modality_isomorphism_loss(f, labels, per_image).item() == pytest.approx(
        ((cos - 1) ** 2).mean().item(), rel=1e-5
    )


def test_registered_npt(state_factory):
    spec = OBJECTIVES.get("npt")
    assert spec.default_weights == {"lc": 0.3, "mi": 0.8}
    gen = torch.Generator().manual_seed(1)
    learned = torch.randn(4, 8, generator=gen, requires_grad=True)
    frozen = torch.randn(4, 8, generator=gen, requires_grad=True)
    state = state_factory(learned, frozen, torch.randn(3, 8, generator=gen), torch.tensor([0, 1, 3]))
    for reduction, scale in (("mean", 1.0), ("sum", 12.0)):
        out = build_terms("npt", spec.config_cls(reduction=reduction))(state)
        assert out["lc"].item() == pytest.approx(scale * language_collapse_loss(state.text_feats).item())
    out["lc"].backward()
    assert frozen.grad is None and learned.grad.abs().sum() > 0
