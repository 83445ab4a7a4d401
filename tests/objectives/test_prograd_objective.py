"""ProGrad: the zero-shot guide term, the per-tensor projection, and one update against the reference's
two-backward procedure (`Dassl.ProGrad.pytorch` `prograd_backward_and_update`) on a real prompt learner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tailprompt.backbone import load_backbone
from tailprompt.objectives import OBJECTIVES, ObjectiveContext
from tailprompt.objectives.prograd import (
    ProGradConfig,
    ProGradError,
    gradient_transform,
    guide_terms,
    project_gradients_,
    projected_gradient,
    zero_shot_guide_loss,
)
from tailprompt.prompts import build_learner
from tailprompt.prompts.prograd import ProGradLearnerConfig


def test_guide_loss_is_kl_plus_teacher_entropy_times_t_squared():
    gen = torch.Generator().manual_seed(0)
    logits, zs = 10 * torch.randn(5, 7, generator=gen, dtype=torch.float64), 10 * torch.randn(5, 7, generator=gen,
                                                                                               dtype=torch.float64)
    for t in (1.0, 2.0):
        p_zs = F.softmax(zs / t, -1)
        kl = (p_zs * (p_zs.log() - F.log_softmax(logits / t, -1))).sum(1).mean()
        entropy = -(p_zs * p_zs.log()).sum(1).mean()
        assert zero_shot_guide_loss(logits, zs, t).item() == pytest.approx(((kl + entropy) * t * t).item(), rel=1e-12)


def test_guide_loss_gradient_equals_the_kl_gradient_and_skips_the_teacher():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    zs = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    zero_shot_guide_loss(logits, zs).backward()
    expected = (F.softmax(logits.detach(), -1) - F.softmax(zs.detach(), -1)) / 4  # d KL / d logits, batch mean
    torch.testing.assert_close(logits.grad, expected)
    assert zs.grad is None


def test_projection_removes_the_conflicting_component_only():
    guide = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    conflicting = torch.tensor([[-2.0, 3.0], [1.0, 0.0]])
    projected = projected_gradient(conflicting, guide)
    torch.testing.assert_close(projected, torch.tensor([[0.0, 3.0], [1.0, 0.0]]))  # orthogonal to the guide
    half = projected_gradient(conflicting, guide, strength=0.5)
    torch.testing.assert_close(half, torch.tensor([[-1.0, 3.0], [1.0, 0.0]]))
    agreeing = torch.tensor([[2.0, 3.0], [1.0, 0.0]])
    assert torch.equal(projected_gradient(agreeing, guide), agreeing)
    # a zero guide gradient: the reference's 0/0 is NaN, its sign test false, the gradient unchanged
    assert torch.equal(projected_gradient(conflicting, torch.zeros(2, 2)), conflicting)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-vit")


def step_inputs(backbone, against_zero_shot: bool):
    """A ProGrad learner, frozen image features, the frozen text features and labels for one step."""
    torch.manual_seed(0)
    names = ["cat", "golden_retriever", "sea or lake", "tree"]
    learner = build_learner("prograd", ProGradLearnerConfig(), backbone, names, "a photo of a {}.")
    gen = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(6, backbone.embed_dim, generator=gen), dim=-1)
    with torch.no_grad():
        tokens = backbone.tokenize([f"a photo of a {n}." for n in names])
        frozen_text = F.normalize(backbone.encode_text(tokens), dim=-1)
    zs = float(backbone.logit_scale) * images @ frozen_text.T
    # labels the zero-shot model finds least likely make the two gradients conflict
    labels = zs.argmin(1) if against_zero_shot else zs.argmax(1)
    return learner, images, zs, labels


def logits_of(learner, backbone, images):
    return float(backbone.logit_scale) * images @ learner.text_features().T


def reference_update_grads(learner, backbone, images, zs, labels, lam=1.0):
    """`prograd_backward_and_update` up to the optimiser step, transcribed (loss_a = CE, loss_b = KL)."""
    out = logits_of(learner, backbone, images)
    xe = F.cross_entropy(out, labels)
    kl = (-F.softmax(zs, -1) * F.log_softmax(out, -1)).sum(1).mean()
    params = list(learner.parameters())
    for p in params:
        p.grad = None
    kl.backward(retain_graph=True)
    b_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad.zero_()
    xe.backward()
    conflicts = []
    for p, b_grad in zip(params, b_grads):
        b_grad_norm = b_grad / torch.linalg.norm(b_grad)
        a_grad = p.grad.clone()
        a_grad_norm = a_grad / torch.linalg.norm(a_grad)
        conflicts.append(bool(torch.dot(a_grad_norm.flatten(), b_grad_norm.flatten()) < 0))
        if conflicts[-1]:
            p.grad = a_grad - lam * torch.dot(a_grad.flatten(), b_grad_norm.flatten()) * b_grad_norm
    return [p.grad.clone() for p in params], conflicts


@pytest.mark.parametrize("against_zero_shot", [True, False])
def test_one_update_equals_the_reference_procedure(backbone, against_zero_shot):
    learner, images, zs, labels = step_inputs(backbone, against_zero_shot)
    expected, conflicts = reference_update_grads(learner, backbone, images, zs, labels)
    assert conflicts == [against_zero_shot]  # both branches of the rule are exercised
    # ours: the registered objective; one backward of the weighted total (guide weight 0), then its transform
    spec = OBJECTIVES.get("prograd")
    assert spec.default_weights == {"guide": 0.0} and spec.reads == {"zeroshot_logits"}
    objective = spec.make(ProGradConfig(), ObjectiveContext(torch.zeros(4, 1), ["a", "b", "c", "d"]))
    out = logits_of(learner, backbone, images)
    guide = objective.terms(_State(out, zs))["guide"]
    total = F.cross_entropy(out, labels)
    params = [p for p in learner.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    total.backward(retain_graph=True)
    objective.transform_gradients(params, {"guide": guide})
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-8)
    if against_zero_shot:  # the stepped gradient no longer opposes the zero-shot guide
        (guide_grad,) = torch.autograd.grad(zero_shot_guide_loss(logits_of(learner, backbone, images), zs), params)
        cosine = F.cosine_similarity(params[0].grad.flatten(), guide_grad.flatten(), dim=0)
        assert abs(float(cosine)) < 1e-5


def test_without_projection_there_is_no_transform_and_guide_needs_zero_shot_logits():
    assert gradient_transform(ProGradConfig(projection=False)) is None
    with pytest.raises(ProGradError, match="zero-shot logits"):
        guide_terms(ProGradConfig())(_State(torch.zeros(2, 3), None))
    with pytest.raises(ProGradError, match=r"got shape \[2, 4\]"):  # logits over another label space
        guide_terms(ProGradConfig())(_State(torch.zeros(2, 3), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="temperature"):
        ProGradConfig(temperature=0.0)


def test_parameters_the_guide_does_not_reach_keep_their_gradient():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    guide = (used * torch.tensor([1.0, 0.0, 0.0])).sum()
    used.grad, unused.grad = torch.tensor([-1.0, 1.0, 0.0]), torch.tensor([5.0, 5.0])
    project_gradients_([used, unused], guide)
    torch.testing.assert_close(used.grad, torch.tensor([0.0, 1.0, 0.0]))
    assert unused.grad.tolist() == [5.0, 5.0]


class _State:
    """The two StepState fields the guide term reads."""

    def __init__(self, logits, zeroshot_logits):
        self.logits, self.zeroshot_logits = logits, zeroshot_logits
