"""The matrix every registered learner must pass on the tiny ViT backbone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tailprompt.prompts import LEARNERS

from .conftest import CLASSNAMES, OTHER_CLASSNAMES, TEMPLATE, build

# MaPLe's, CoPrompt's and PromptSRC's default depth 9 is clamped to tiny-vit's 3 blocks (tested in their
# exactness tests).
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*prompt_depth=9 exceeds"),
    pytest.mark.filterwarnings("ignore:promptsrc. prompt_depth_(text|vision)=9 exceeds"),
]

ALL = LEARNERS.names()
PARAMETER_FREE = {"zeroshot"}
TRAINABLE = [n for n in ALL if n not in PARAMETER_FREE]
LABELS = torch.tensor([0, 1, 2, 0])

# The reference's trainable parameter names (relative to `prompt_learner.`) for the default configs
# on a 3-block backbone (MaPLe's depth 9 is clamped to 3: two deep prompt pairs).
REFERENCE_NAMES = {
    "zeroshot": set(),
    "coop": {"ctx"},
    "dpc": {"ctx"},  # the default base learner is CoOp; the stage-1 copy is a non-persistent buffer
    "kgcoop": {"ctx"},
    "prograd": {"ctx"},
    "cocoop": {
        "ctx",
        "meta_net.linear1.weight",
        "meta_net.linear1.bias",
        "meta_net.linear2.weight",
        "meta_net.linear2.bias",
    },
    "maple": {
        "ctx",
        "proj.weight",
        "proj.bias",
        "compound_prompts_text.0",
        "compound_prompts_text.1",
        "compound_prompt_projections.0.weight",
        "compound_prompt_projections.0.bias",
        "compound_prompt_projections.1.weight",
        "compound_prompt_projections.1.bias",
    },
    # The reference saves its whole `CustomCLIP`, whose prompts live inside the CLIP blocks.
    "promptsrc": {
        "prompt_learner.ctx",
        "image_encoder.VPT",
        "text_encoder.transformer.resblocks.1.VPT_shallow",
        "text_encoder.transformer.resblocks.2.VPT_shallow",
        "image_encoder.transformer.resblocks.1.VPT_shallow",
        "image_encoder.transformer.resblocks.2.VPT_shallow",
    },
}
# CoPrompt's reference saves its whole `CustomCLIP`: MaPLe's prompt learner under `prompt_learner.` and the
# top-level adapters.
REFERENCE_NAMES["coprompt"] = {f"prompt_learner.{k}" for k in REFERENCE_NAMES["maple"]} | {
    f"adapter_{tower}.fc.{i}.weight" for tower in ("image", "text") for i in (0, 2)
}


def test_every_learner_is_covered():
    assert set(ALL) == set(REFERENCE_NAMES), "a new learner needs its reference parameter names here"


def outputs(name, learner, images):
    """(image features [B, D], text features [K, D] or [B, K, D]) as the engine computes them."""
    spec = LEARNERS.get(name)
    img = learner.image_features(images)
    txt = learner.text_features(img if spec.instance_conditioned else None)
    return img, txt


def logits_of(name, learner, backbone, images):
    img, txt = outputs(name, learner, images)
    if txt.dim() == 3:
        return backbone.logit_scale * torch.einsum("bd,bkd->bk", img, txt)
    return backbone.logit_scale * img @ txt.T


def sgd_steps(name, learner, backbone, images, steps, lr=0.01):
    opt = torch.optim.SGD(
        [p for p in learner.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=5e-4
    )
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(logits_of(name, learner, backbone, images), LABELS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ALL)
def test_shapes_and_normalisation(name, backbone, images):
    learner = build(name, backbone)
    img, txt = outputs(name, learner, images)
    b, k, d = images.shape[0], len(CLASSNAMES), backbone.embed_dim
    assert img.shape == (b, d)
    expected = (b, k, d) if LEARNERS.get(name).instance_conditioned else (k, d)
    assert txt.shape == expected
    assert txt.dtype == torch.float32 and img.dtype == torch.float32
    assert torch.isfinite(txt).all() and torch.isfinite(img).all()
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(b), atol=1e-5, rtol=0)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(expected[:-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_prompt_state_names_follow_the_reference(name, backbone):
    learner = build(name, backbone)
    state = learner.prompt_state()
    assert set(state) == REFERENCE_NAMES[name]
    # prompt_state holds every trainable parameter (under the reference's names) and nothing of the backbone
    trainable = {n for n, p in learner.named_parameters() if p.requires_grad}
    assert len(state) == len(trainable) and set(learner.state_dict()) == trainable
    learner.load_prompt_state(state)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_only_prompt_parameters(name, backbone, images):
    learner = build(name, backbone)
    params = dict(learner.named_parameters())
    assert (not params) == (name in PARAMETER_FREE)
    assert not any(p.requires_grad for p in backbone.parameters())
    logits = logits_of(name, learner, backbone, images)
    if not params:
        assert not logits.requires_grad
        return
    F.cross_entropy(logits, LABELS).backward()
    for pname, p in params.items():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in params.values())
    assert all(p.grad is None for p in backbone.parameters())


@pytest.mark.parametrize("name", TRAINABLE)
def test_backbone_bit_identical_after_training(name, backbone, images):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    learner = build(name, backbone)
    start = {k: v.clone() for k, v in learner.prompt_state().items()}
    sgd_steps(name, learner, backbone, images, steps=3)
    after = backbone.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(start[k], v) for k, v in learner.prompt_state().items()), (
        "prompts did not move"
    )
    assert not backbone.training


# 16-vector contexts (ProGrad's default) overshoot on the random tiny tower at this lr, as CoOp's 16 random ones
# do; with 4 the context is all template words, like CoOp's default.
SHORT_CONTEXT = {"prograd": {"n_ctx": 4}}


@pytest.mark.parametrize("name", TRAINABLE)
def test_loss_decreases_on_a_fixed_batch(name, backbone, images):
    losses = sgd_steps(name, build(name, backbone, **SHORT_CONTEXT.get(name, {})), backbone, images, steps=6)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("name", ALL)
def test_prompt_state_round_trip_gives_identical_logits(name, backbone, images):
    trained = build(name, backbone, seed=0)
    if name not in PARAMETER_FREE:
        sgd_steps(name, trained, backbone, images, steps=2)
    state = trained.prompt_state()
    fresh = build(name, backbone, seed=123)
    fresh.load_prompt_state(state)
    with torch.no_grad():
        assert torch.equal(
            logits_of(name, fresh, backbone, images), logits_of(name, trained, backbone, images)
        )
    # prompt_state is a copy: training on must not change it
    if state:
        key = next(iter(state))
        snapshot = state[key].clone()
        sgd_steps(name, trained, backbone, images, steps=1)
        assert torch.equal(state[key], snapshot)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_manual_seed(name, backbone, images):
    runs = []
    for _ in range(2):
        learner = build(name, backbone, seed=7)
        if name not in PARAMETER_FREE:
            sgd_steps(name, learner, backbone, images, steps=2)
        with torch.no_grad():
            runs.append((learner.prompt_state(), logits_of(name, learner, backbone, images)))
    (state_a, logits_a), (state_b, logits_b) = runs
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(logits_a, logits_b)


@pytest.mark.parametrize("name", ALL)
def test_set_classnames_keeps_prompts_and_rebuilds_classes(name, backbone, images):
    learner = build(name, backbone)
    if name not in PARAMETER_FREE:
        sgd_steps(name, learner, backbone, images, steps=1)
    state = learner.prompt_state()
    with torch.no_grad():
        _, txt_before = outputs(name, learner, images)
    learner.set_classnames(OTHER_CLASSNAMES, TEMPLATE)
    assert all(torch.equal(state[k], v) for k, v in learner.prompt_state().items())
    with torch.no_grad():
        _, txt_other = outputs(name, learner, images)
    assert txt_other.shape[-2] == len(OTHER_CLASSNAMES)
    # the new space is built like a fresh learner with the same prompts on those classes
    fresh = build(name, backbone, classnames=OTHER_CLASSNAMES, seed=99)
    fresh.load_prompt_state(state)
    with torch.no_grad():
        assert torch.equal(outputs(name, fresh, images)[1], txt_other)
    learner.set_classnames(CLASSNAMES, TEMPLATE)
    with torch.no_grad():
        assert torch.equal(outputs(name, learner, images)[1], txt_before)


@pytest.mark.parametrize("name", ALL)
def test_train_mode_leaves_backbone_in_eval(name, backbone):
    learner = build(name, backbone)
    learner.train()
    assert not backbone.training
    assert all(not n.startswith(("model.", "backbone.")) for n, _ in learner.named_parameters())


@pytest.mark.parametrize("name", ALL)
def test_deepcopy_shares_the_backbone_and_copies_prompts(name, backbone):
    learner = build(name, backbone)
    clone = copy.deepcopy(learner)
    assert clone.backbone is backbone
    for key, p in clone.named_parameters():
        assert p.data_ptr() != dict(learner.named_parameters())[key].data_ptr()


@pytest.mark.parametrize("template", ["a photo", "a {} of a {}", "a {} of {kind}", "a {0} {}"])
def test_zeroshot_templates_need_exactly_one_placeholder_and_no_other_field(template):
    from tailprompt.prompts import LEARNERS, LearnerError

    config_cls = LEARNERS.get("zeroshot").config_cls
    with pytest.raises(LearnerError, match=r"templates\[1\]: template .* must contain exactly one '\{\}'"):
        config_cls(templates=["a photo of a {}.", template])
