"""DeKg: the HSIC term against the reference's formula and an independent identity; the full DeKg loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tailprompt.engine.loss import BoundObjective, objective_terms
from tailprompt.engine.resolve import resolve_config
from tailprompt.objectives import OBJECTIVES, ObjectiveContext
from tailprompt.objectives.dekg import centering_matrix, hsic_independence_loss


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def features(k: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return unit_rows(torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=dtype))


def reference_hsic(w_t: torch.Tensor, w_clip: torch.Tensor) -> torch.Tensor:
    """`cnunlp/DeKg:trainers/loss.py` HSICLoss, step by step in its own order of operations."""
    w_t = w_t / torch.norm(w_t)
    w_clip = w_clip / torch.norm(w_clip)
    n = w_t.size(0)
    h = torch.eye(n, dtype=w_t.dtype) - (1 / n) * torch.ones(n, n, dtype=w_t.dtype)
    k_t = torch.mm(w_t, w_t.t())
    k_clip = torch.mm(w_clip, w_clip.t())
    return torch.trace(torch.mm(h, torch.mm(k_t, torch.mm(h, k_clip))))


def test_hsic_equals_the_reference_formula():
    w, w_clip = features(7, 5, 0), features(7, 5, 1)
    torch.testing.assert_close(hsic_independence_loss(w, w_clip), reference_hsic(w, w_clip), rtol=0, atol=1e-15)
    w32, c32 = w.float(), w_clip.float()
    torch.testing.assert_close(hsic_independence_loss(w32, c32), reference_hsic(w32, c32), rtol=1e-6, atol=1e-8)


def test_hsic_equals_the_cross_covariance_identity_without_normalisation_factor():
    # trace(H A A^T H B B^T) = ||A^T H B||_F^2 = ||(A - mean A)^T B||_F^2 (H symmetric, idempotent); the
    # reference drops the estimator's 1/(K-1)^2, so nothing divides the squared norm.
    w, w_clip = features(9, 6, 2), features(9, 6, 3)
    a = (w / np.linalg.norm(w.numpy())).numpy()
    b = (w_clip / np.linalg.norm(w_clip.numpy())).numpy()
    expected = float(np.sum(((a - a.mean(0)).T @ b) ** 2))
    assert hsic_independence_loss(w, w_clip).item() == pytest.approx(expected, rel=1e-12)


def test_hsic_of_identical_features_is_positive_and_scale_free():
    w = features(6, 4, 4)
    same = hsic_independence_loss(w, w).item()
    assert same > 0  # fully dependent: the minimum is not reached
    assert hsic_independence_loss(3.0 * w, w).item() == pytest.approx(same, rel=1e-12)  # Frobenius-normalised
    h = centering_matrix(6, dtype=torch.float64)
    torch.testing.assert_close(h @ h, h)  # the centring matrix is a projection


def test_hsic_gradient_reaches_learned_features_only():
    w = features(5, 4, 5).requires_grad_(True)
    w_clip = features(5, 4, 6).requires_grad_(True)
    hsic_independence_loss(w, w_clip).backward()
    assert w.grad is not None and float(w.grad.abs().sum()) > 0
    assert w_clip.grad is None  # the hand-crafted features are a constant, as under the reference's no_grad


def test_hsic_instance_conditioned_is_the_mean_over_images():
    per_image = torch.stack([features(5, 4, 10 + b) for b in range(3)])
    w_clip = features(5, 4, 9)
    expected = torch.stack([reference_hsic(per_image[b], w_clip) for b in range(3)]).mean()
    torch.testing.assert_close(hsic_independence_loss(per_image, w_clip), expected)


def test_dekg_preset_total_is_ce_plus_guidance_plus_hsic(state_factory):
    cfg = resolve_config("dekg")
    assert cfg.learner.name == "kgcoop" and cfg.optim.batch_size == 128 and cfg.optim.epochs == 100
    assert cfg.data.templates == {"dtd": "a photo of a {}, a type of texture."}
    gen = torch.Generator().manual_seed(0)
    text, frozen = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    images, labels = torch.randn(3, 8, generator=gen), torch.tensor([0, 3, 1])
    context = ObjectiveContext(unit_rows(frozen), ["a", "b", "c", "d"])
    bound = [BoundObjective(o.name, OBJECTIVES.get(o.name).make(o.options, context), o.weights)
             for o in cfg.objectives]
    state = state_factory(text, frozen, images, labels)
    loss = objective_terms(bound, state)
    total, terms = loss.total, loss.logged
    t, f = unit_rows(text.double()), unit_rows(frozen.double())
    ce = torch.nn.functional.cross_entropy(state.logits.double(), labels)
    guidance = 1.0 - torch.nn.functional.cosine_similarity(t, f, dim=1, eps=1e-7).mean()
    expected = ce + 8.0 * guidance + 6.0 * reference_hsic(t, f)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(terms) == {"cross_entropy/ce", "kgcoop/guidance", "dekg/hsic"}


def test_dekg_is_registered_with_the_scripts_weight():
    assert OBJECTIVES.get("dekg").default_weights == {"hsic": 6.0}
