"""TCPT: the margin mean-variance term against a direct computation, and text moment matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tailprompt.objectives import OBJECTIVES
from tailprompt.objectives.tcpt import logit_margins, margin_mean_variance_loss, text_moment_matching_loss

from .conftest import build_terms


def test_margin_matches_direct_computation_on_crafted_logits():
    logits = torch.tensor(
        [
            [30.0, 25.0, 10.0],  # correct, margin 5
            [20.0, 28.0, 27.0],  # label 2 is second: margin 27 - 28 = -1
            [40.0, 40.0, 0.0],  # tie with a rival: margin 0
            [-5.0, -7.0, -1.0],  # label 0: -5 - (-1) = -4
        ]
    )
    labels = torch.tensor([0, 2, 1, 0])
    margins = logit_margins(logits, labels)
    assert margins.tolist() == [5.0, -1.0, 0.0, -4.0]
    direct = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        direct.append(row[y] - max(v for j, v in enumerate(row) if j != y))
    m = np.array(direct)
    expected = -0.1 * m.mean() + 0.01 * m.var()  # numpy's var is the population variance
    assert margin_mean_variance_loss(logits, labels).item() == pytest.approx(expected)
    assert margin_mean_variance_loss(logits, labels, alpha=1.0, beta=0.0).item() == pytest.approx(-m.mean())


def test_margin_gradient_raises_true_logit():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], requires_grad=True)
    margin_mean_variance_loss(logits, torch.tensor([0, 2]), beta=0.0).backward()
    # -alpha*mean(m): d/dz_y = -alpha/B, d/dz_rival = +alpha/B, others 0
    assert torch.allclose(logits.grad, torch.tensor([[-0.05, 0.05, 0.0], [0.0, 0.05, -0.05]]))


def test_moment_matching_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    tuned = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=-1)
    frozen = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=-1)
    a, b = tuned.numpy(), frozen.numpy()
    mean_gap = ((a.mean(0) - b.mean(0)) ** 2).sum()
    cov_gap = ((np.cov(a.T, bias=True) - np.cov(b.T, bias=True)) ** 2).sum()
    assert text_moment_matching_loss(tuned, frozen).item() == pytest.approx(mean_gap + cov_gap)
    assert text_moment_matching_loss(frozen * 3, frozen).item() == pytest.approx(0.0, abs=1e-14)


def test_moment_matching_hand_worked():
    # tuned: classes at (1,0) and (-1,0): mean 0, cov diag(1, 0); frozen: both at (0,1): mean (0,1), cov 0
    tuned = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    frozen = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert text_moment_matching_loss(tuned, frozen).item() == pytest.approx(1.0 + 1.0)


def test_moment_matching_instance_conditioned_and_frozen_constant():
    gen = torch.Generator().manual_seed(2)
    per_image = torch.randn(2, 5, 3, generator=gen, requires_grad=True)
    frozen = torch.randn(5, 3, generator=gen, requires_grad=True)
    loss = text_moment_matching_loss(per_image, frozen)
    expected = sum(text_moment_matching_loss(per_image[b], frozen) for b in range(2)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert frozen.grad is None and per_image.grad.abs().sum() > 0


def test_registered_tcpt(state_factory):
    spec = OBJECTIVES.get("tcpt")
    assert spec.default_weights == {"margin": 1.0, "moment": 5.0}
    gen = torch.Generator().manual_seed(3)
    state = state_factory(
        torch.randn(4, 8, generator=gen),
        torch.randn(4, 8, generator=gen),
        torch.randn(5, 8, generator=gen),
        torch.tensor([0, 1, 2, 3, 3]),
    )
    out = build_terms("tcpt")(state)
    assert out["margin"].item() == pytest.approx(margin_mean_variance_loss(state.logits, state.labels).item())
    alt = build_terms("tcpt", spec.config_cls(alpha=0.0, beta=1.0))(state)
    assert alt["margin"].item() == pytest.approx(
        logit_margins(state.logits, state.labels).var(unbiased=False).item()
    )
