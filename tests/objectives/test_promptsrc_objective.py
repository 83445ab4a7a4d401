"""PromptSRC's self-regulating terms against an independent computation of the reference formulas."""

from __future__ import annotations

import math

import pytest
import torch

from tailprompt.backbone import load_backbone
from tailprompt.data.templates import PROMPTSRC_TEMPLATES
from tailprompt.objectives import OBJECTIVES, ObjectiveContext
from tailprompt.objectives.promptsrc import (
    ensemble_text_features,
    ensemble_zeroshot_logits,
    image_consistency_loss,
    promptsrc_terms,
    text_consistency_loss,
    zeroshot_distillation_loss,
)


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def features(seed=0, b=4, k=5, d=8):
    g = torch.Generator().manual_seed(seed)
    return (
        unit(torch.randn(k, d, generator=g)),  # learned text
        unit(torch.randn(k, d, generator=g)),  # ensemble text
        unit(torch.randn(b, d, generator=g)),  # prompted image
        unit(torch.randn(b, d, generator=g)),  # frozen image
    )


def kl_by_hand(logits, zeroshot_logits):
    """sum_{b,k} p_zs (log p_zs - log p) / (B K), written out over Python floats."""
    total = 0.0
    for row, zrow in zip(logits.tolist(), zeroshot_logits.tolist()):
        lse = math.log(sum(math.exp(v - max(row)) for v in row)) + max(row)
        zlse = math.log(sum(math.exp(v - max(zrow)) for v in zrow)) + max(zrow)
        for v, z in zip(row, zrow):
            total += math.exp(z - zlse) * ((z - zlse) - (v - lse))
    return total / logits.numel()


def test_l1_terms_are_means_over_every_entry():
    text, ensemble, image, frozen = features()
    def mean_abs(x, y):
        return sum(abs(a - b) for a, b in zip(x.flatten().tolist(), y.flatten().tolist())) / x.numel()

    expected_text, expected_image = mean_abs(text, ensemble), mean_abs(image, frozen)
    assert text_consistency_loss(text, ensemble).item() == pytest.approx(expected_text, rel=1e-6)
    assert image_consistency_loss(image, frozen).item() == pytest.approx(expected_image, rel=1e-6)
    # per-image class features (instance-conditioned learners): per image, then averaged
    per_image = torch.stack([text, ensemble])
    assert text_consistency_loss(per_image, ensemble).item() == pytest.approx(expected_text / 2, rel=1e-6)


def test_kl_goes_from_the_zeroshot_distribution_to_the_prompted_one():
    g = torch.Generator().manual_seed(1)
    logits, zs = 10 * torch.randn(3, 6, generator=g), 10 * torch.randn(3, 6, generator=g)
    got = zeroshot_distillation_loss(logits, zs).item()
    assert got == pytest.approx(kl_by_hand(logits, zs), rel=1e-5)
    assert got != pytest.approx(kl_by_hand(zs, logits), rel=1e-2)  # KL is not symmetric: direction matters
    assert zeroshot_distillation_loss(zs, zs).item() == pytest.approx(0.0, abs=1e-6)


def test_step_terms_use_the_ensemble_zero_shot_classifier_not_the_single_template(state_factory):
    text, ensemble, image, frozen = features(2)
    state = state_factory(text, unit(torch.randn(5, 8)), image, torch.tensor([0, 1, 2, 3]), frozen_image_feats=frozen)
    terms = promptsrc_terms(state, ensemble)
    zs = 100.0 * frozen @ ensemble.T
    torch.testing.assert_close(ensemble_zeroshot_logits(frozen, ensemble, 100.0), zs)
    assert terms["scl_logits"].item() == pytest.approx(kl_by_hand(state.logits, zs), rel=1e-5)
    assert terms["scl_logits"].item() != pytest.approx(kl_by_hand(state.logits, state.zeroshot_logits), rel=1e-2)
    assert terms["scl_text"].item() == pytest.approx((text - ensemble).abs().mean().item(), rel=1e-6)
    assert terms["scl_image"].item() == pytest.approx((image - frozen).abs().mean().item(), rel=1e-6)


def test_gradients_reach_the_learned_side_only():
    text, ensemble, image, frozen = features(3)
    text, image = text.clone().requires_grad_(), image.clone().requires_grad_()
    ensemble, frozen = ensemble.clone().requires_grad_(), frozen.clone().requires_grad_()
    logits = 100.0 * image @ text.T
    loss = (
        text_consistency_loss(text, ensemble)
        + image_consistency_loss(image, frozen)
        + zeroshot_distillation_loss(logits, ensemble_zeroshot_logits(frozen, ensemble, 100.0))
    )
    loss.backward()
    assert text.grad.abs().sum() > 0 and image.grad.abs().sum() > 0
    assert ensemble.grad is None and frozen.grad is None


def test_registered_with_the_reference_weights_and_reads():
    spec = OBJECTIVES.get("promptsrc")
    assert spec.default_weights == {"scl_text": 25.0, "scl_image": 10.0, "scl_logits": 1.0}
    assert spec.reads == frozenset({"frozen_image_feats"})


def test_the_teacher_ensemble_is_the_reference_60_templates():
    assert len(PROMPTSRC_TEMPLATES) == len(set(PROMPTSRC_TEMPLATES)) == 60
    assert PROMPTSRC_TEMPLATES[0] == "a photo of a {}." and PROMPTSRC_TEMPLATES[-1] == "itap of the {}."
    assert all(t.count("{}") == 1 for t in PROMPTSRC_TEMPLATES)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny-vit")


def test_ensemble_teacher_averages_unnormalised_features_then_normalises(tiny):
    names, templates = ["cat", "golden_retriever", "sea or lake"], PROMPTSRC_TEMPLATES[:7]
    got = ensemble_text_features(tiny, names, templates)
    # independent: open_clip's full-context encode_text per template, stacked [K, T, D], mean over T
    with torch.no_grad():
        raw = torch.stack(
            [tiny.encode_text(tiny.tokenize([t.format(n.replace("_", " ")) for n in names]), truncate=False)
             for t in templates],
            dim=1,
        )
    torch.testing.assert_close(got, unit(raw.mean(dim=1)), atol=1e-6, rtol=0)
    normalised_first = unit(unit(raw).mean(dim=1))  # what a zero-shot ensemble (CoOp's ZeroshotCLIP2) does
    assert not torch.allclose(got, normalised_first, atol=1e-4)


def test_built_terms_use_the_run_teacher(tiny, state_factory):
    names = ["cat", "dog", "red car"]
    context = ObjectiveContext(torch.zeros(3, tiny.embed_dim), names, backbone=tiny)
    spec = OBJECTIVES.get("promptsrc")
    terms = spec.make(spec.config_cls(), context).terms
    text, _, image, frozen = features(4, k=3, d=tiny.embed_dim)
    state = state_factory(text, unit(torch.randn(3, tiny.embed_dim)), image, torch.tensor([0, 1, 2, 0]),
                          frozen_image_feats=frozen)
    teacher = ensemble_text_features(tiny, names, PROMPTSRC_TEMPLATES)
    expected = promptsrc_terms(state, teacher)
    got = terms(state)
    assert set(got) == {"scl_text", "scl_image", "scl_logits"}
    for k in got:
        assert got[k].item() == pytest.approx(expected[k].item(), rel=1e-6)
