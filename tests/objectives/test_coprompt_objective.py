"""CoPrompt's consistency terms against the reference formulas (ShuvenduRoy/CoPrompt `CustomCLIP.forward`)."""

from __future__ import annotations

import pytest
import torch

from tailprompt.objectives import OBJECTIVES
from tailprompt.objectives.base import ObjectiveContext
from tailprompt.objectives.coprompt import (
    CoPromptObjectiveConfig,
    description_consistency_loss,
    distillation_loss,
    image_consistency_loss,
)

from .conftest import make_state

G = torch.Generator().manual_seed(11)


def rand(*shape):
    return torch.randn(*shape, generator=G)


def reference_terms(text, desc, img, teacher_img, distill="cosine"):
    """The reference's step, written out: normalise teachers, then cosine (eps 1e-7) or MSE distances."""
    desc = desc / desc.norm(dim=-1, keepdim=True)
    teacher_img = teacher_img / teacher_img.norm(dim=-1, keepdim=True)
    if distill == "cosine":
        cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
        return 1.0 - torch.mean(cos(text, desc)), 1.0 - torch.mean(cos(img, teacher_img))
    return torch.nn.functional.mse_loss(text, desc), torch.nn.functional.mse_loss(img, teacher_img)


def by_hand_cosine_term(a, b):
    return 1.0 - sum(float(x @ y) / float(x.norm() * y.norm()) for x, y in zip(a, b)) / a.shape[0]


def test_cosine_distillation_is_one_minus_mean_cosine_by_hand():
    a, b = rand(5, 7), rand(5, 7)
    assert distillation_loss(a, b).item() == pytest.approx(by_hand_cosine_term(a, b), abs=1e-6)
    assert distillation_loss(a, 3.0 * a).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert distillation_loss(a, -a).item() == pytest.approx(2.0, abs=1e-6)


def test_mse_distillation_is_the_mean_over_all_elements():
    a, b = rand(4, 3), rand(4, 3)
    assert distillation_loss(a, b, "mse").item() == pytest.approx(float(((a - b) ** 2).sum() / 12), rel=1e-6)
    with pytest.raises(ValueError, match="distill"):
        distillation_loss(a, b, "l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one shape"):
        distillation_loss(a, b[:3])


@pytest.mark.parametrize("distill", ["cosine", "mse"])
def test_terms_equal_the_reference_step(distill):
    k, b, d = 6, 4, 8
    text = torch.nn.functional.normalize(rand(k, d), dim=-1)
    img = torch.nn.functional.normalize(rand(b, d), dim=-1)
    desc, teacher = 2.0 * rand(k, d), 5.0 * rand(b, d)  # teachers arrive unnormalised here
    ref_text, ref_img = reference_terms(text, desc, img, teacher, distill)
    torch.testing.assert_close(description_consistency_loss(text, desc, distill), ref_text, atol=1e-6, rtol=0)
    torch.testing.assert_close(image_consistency_loss(img, teacher, distill), ref_img, atol=1e-6, rtol=0)


def test_instance_conditioned_text_is_scored_per_image_and_averaged():
    per_image, desc = rand(3, 5, 4), rand(5, 4)
    expected = sum(by_hand_cosine_term(t, desc) for t in per_image) / 3
    assert description_consistency_loss(per_image, desc).item() == pytest.approx(expected, abs=1e-6)


def test_gradients_reach_the_student_only():
    text, desc = rand(5, 4).requires_grad_(), rand(5, 4).requires_grad_()
    img, teacher = rand(3, 4).requires_grad_(), rand(3, 4).requires_grad_()
    (description_consistency_loss(text, desc) + image_consistency_loss(img, teacher)).backward()
    assert text.grad is not None and text.grad.abs().sum() > 0 and img.grad is not None
    assert desc.grad is None and teacher.grad is None


def test_registered_objective_reads_the_teachers_from_the_step():
    spec = OBJECTIVES.get("coprompt")
    assert spec.default_weights == {"text": 1.0, "image": 1.0}  # TRAINER.W: 1.0 on both, as in the yaml
    assert spec.reads == frozenset({"description_text_feats", "teacher_image_feats"})
    k, b, d = 4, 3, 6
    state = make_state(rand(k, d), rand(k, d), rand(b, d), torch.tensor([0, 1, 3]))
    context = ObjectiveContext(frozen_text_feats=state.frozen_text_feats, classnames=list("abcd"))
    fn = spec.make(CoPromptObjectiveConfig(), context).terms
    with pytest.raises(ValueError, match="coprompt"):
        fn(state)  # the engine did not fill the teachers
    state.description_text_feats, state.teacher_image_feats = rand(k, d), rand(b, d)
    terms = fn(state)
    ref_text, ref_img = reference_terms(
        state.text_feats, state.description_text_feats, state.image_feats, state.teacher_image_feats
    )
    assert set(terms) == {"text", "image"}
    torch.testing.assert_close(terms["text"], ref_text, atol=1e-6, rtol=0)
    torch.testing.assert_close(terms["image"], ref_img, atol=1e-6, rtol=0)
