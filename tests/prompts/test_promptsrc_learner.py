"""PromptSRC's IVLP learner against the reference layout, rebuilt independently from token embeddings,
and loading the reference's checkpoint layout (deep prompts kept inside the CLIP blocks)."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from tailprompt.cli import UserError
from tailprompt.prompts import LEARNERS, PromptStateError
from tailprompt.prompts.promptsrc import PromptSRC, PromptSRCConfig

from .conftest import CLASSNAMES, build
from .test_exactness import embedded, manual_text_tower, manual_vision_tower, perturb_, reference_text, unit

NAMES = [n.replace("_", " ") for n in CLASSNAMES]
TEXTS = [f"a photo of a {n}." for n in NAMES]


def quiet_build(backbone, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # depth 9 is clamped to tiny-vit's 3 blocks
        return build("promptsrc", backbone, **overrides)


def expected_features(learner, backbone, images, rounded=False):
    """Text and image features through the manual towers, prompts placed as the reference does."""
    enter = (lambda p: p.half().float()) if rounded else (lambda p: p)
    tokens = backbone.tokenize(TEXTS)
    x = backbone.embed_tokens(tokens)
    x[:, 1 : 1 + learner.n_ctx] = learner.ctx  # the layer-0 text context is never rounded
    text = manual_text_tower(backbone, x, tokens.argmax(-1), [enter(p) for p in learner.deep_text_prompts])
    if learner.depth_vision == 0:
        return text, unit(backbone.encode_image(images))
    image = manual_vision_tower(
        backbone, images, enter(learner.VPT), [enter(p) for p in learner.deep_vision_prompts]
    )
    return text, image


def test_initialisation_follows_the_reference(backbone):
    learner = quiet_build(backbone)
    assert (learner.depth_text, learner.depth_vision) == (3, 3)
    assert torch.equal(learner.ctx.detach(), embedded(backbone, ["a photo of a"])[0, 1:5])
    got = learner.prompt_embeddings().detach()
    assert torch.equal(got, embedded(backbone, TEXTS)[:, : got.shape[1]])
    assert learner.VPT.shape == (4, backbone.vision_width)
    assert [p.shape for p in learner.deep_text_prompts] == [(4, backbone.text_width)] * 2
    assert [p.shape for p in learner.deep_vision_prompts] == [(4, backbone.vision_width)] * 2
    random = torch.cat([learner.VPT.detach(), *[p.detach() for p in learner.deep_vision_prompts]])
    assert 0.01 < float(random.std()) < 0.03  # N(0, 0.02)
    assert LEARNERS.get("promptsrc").uses_image_tower


def test_reference_defaults():
    cfg = PromptSRCConfig()
    assert (cfg.n_ctx_text, cfg.n_ctx_vision, cfg.ctx_init) == (4, 4, "a photo of a")
    assert (cfg.prompt_depth_text, cfg.prompt_depth_vision, cfg.round_prompts_fp16) == (9, 9, False)


def test_unperturbed_depth_one_text_equals_plain_clip_text(backbone):
    learner = quiet_build(backbone, prompt_depth_text=1)
    assert len(learner.deep_text_prompts) == 0
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), reference_text(backbone, TEXTS), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("depth_text", "depth_vision", "n_vision"), [(1, 1, 4), (2, 3, 2), (3, 2, 5), (3, 0, 4)])
def test_sequence_layout_in_both_towers(backbone, images, depth_text, depth_vision, n_vision):
    learner = quiet_build(
        backbone, prompt_depth_text=depth_text, prompt_depth_vision=depth_vision, n_ctx_vision=n_vision
    )
    perturb_(learner)
    with torch.no_grad():
        text, image = expected_features(learner, backbone, images)
        torch.testing.assert_close(learner.text_features(), text, atol=1e-5, rtol=0)
        torch.testing.assert_close(learner.image_features(images), image, atol=1e-5, rtol=0)
        if depth_vision >= 1:  # the appended tokens change the CLS feature
            assert not torch.allclose(image, unit(backbone.encode_image(images)), atol=1e-4)


def test_fp16_rounding_reproduces_the_reference_cast(backbone, images):
    plain = quiet_build(backbone)
    perturb_(plain, scale=0.3)
    with torch.no_grad():  # values that fp16 cannot hold exactly, so the rounding is visible
        for p in plain.parameters():
            p.add_(1e-4 / 3)
    rounded = quiet_build(backbone, round_prompts_fp16=True)
    rounded.load_prompt_state(plain.prompt_state())
    with torch.no_grad():
        text, image = expected_features(rounded, backbone, images, rounded=True)
        torch.testing.assert_close(rounded.text_features(), text, atol=1e-5, rtol=0)
        torch.testing.assert_close(rounded.image_features(images), image, atol=1e-5, rtol=0)
        assert not torch.equal(rounded.text_features(), plain.text_features())
        assert not torch.equal(rounded.image_features(images), plain.image_features(images))
    # the parameters themselves stay fp32; gradients pass through the cast
    assert all(p.dtype == torch.float32 for p in rounded.parameters())
    (rounded.text_features().sum() + rounded.image_features(images).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rounded.parameters())


def test_every_prompt_gets_a_gradient_and_only_prompts_train(backbone, images):
    learner = quiet_build(backbone)
    loss = learner.text_features().pow(2).sum() + learner.image_features(images)[:, 0].sum()
    loss.backward()
    names = [n for n, p in learner.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert names == []
    assert not any(p.requires_grad for p in backbone.parameters())
    assert len(learner.state_dict()) == len(learner.prompt_state())  # buffers are not persistent


def test_new_classes_keep_the_prompts(backbone):
    learner = quiet_build(backbone)
    perturb_(learner)
    before = learner.prompt_state()
    learner.set_classnames(["tree", "red car"], "{}")
    assert learner.text_features().shape == (2, backbone.embed_dim)
    assert all(torch.equal(v, learner.prompt_state()[k]) for k, v in before.items())


def test_random_init_beyond_four_tokens_keeps_x_placeholders(backbone):
    learner = quiet_build(backbone, n_ctx_text=5, prompt_depth_text=1)
    assert learner.prompt_prefix == "X X X X X" and learner.ctx.shape == (5, backbone.text_width)
    two = quiet_build(backbone, n_ctx_text=2, prompt_depth_text=1)  # "of a" stays as fixed tokens
    assert torch.equal(two.ctx.detach(), embedded(backbone, ["a photo"])[0, 1:3])
    got = two.prompt_embeddings().detach()
    assert torch.equal(got, embedded(backbone, TEXTS)[:, : got.shape[1]])


def test_depth_beyond_the_backbone_is_clamped_with_a_warning(backbone):
    with pytest.warns(UserWarning, match="prompt_depth_vision=9"):
        learner = build("promptsrc", backbone, prompt_depth_text=3)
    assert learner.depth_vision == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("promptsrc", backbone, prompt_depth_text=3, prompt_depth_vision=2)


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="prompt_depth_text"):
        PromptSRCConfig(prompt_depth_text=0)
    with pytest.raises(ValueError, match="prompt_depth_vision"):
        PromptSRCConfig(prompt_depth_vision=-1)
    with pytest.raises(ValueError, match="n_ctx_vision"):
        PromptSRCConfig(n_ctx_vision=0)


def test_refuses_a_convolutional_image_tower_unless_vision_is_unprompted():
    conv = types.SimpleNamespace(has_vit=False, vision_width=None, arch="embedded")
    with pytest.raises(UserError, match="convolutional image tower"):
        PromptSRC(PromptSRCConfig(), conv, CLASSNAMES, "{}")


# ----- the reference checkpoint layout -----


def reference_checkpoint(learner, seed=5):
    """`CustomCLIP.state_dict()` of the reference at this learner's depths: prompts inside the CLIP
    blocks, the frozen towers, the class-name buffers and the frozen zero-shot image encoder."""
    g = torch.Generator().manual_seed(seed)

    def rnd(shape):
        return torch.randn(shape, generator=g)

    w, wv = learner.ctx.shape[1], learner.VPT.shape[1]
    state = {
        "prompt_learner.ctx": rnd(learner.ctx.shape).half(),  # fp16 CLIP: ctx is created in its dtype
        "prompt_learner.token_prefix": rnd((3, 1, w)),
        "prompt_learner.token_suffix": rnd((3, 72, w)),
        "prompt_learner.ZS_image_encoder.conv1.weight": rnd((wv, 3, 8, 8)),
        "prompt_learner.ZS_image_encoder.class_embedding": rnd((wv,)),
        "image_encoder.VPT": rnd(learner.VPT.shape),
        "image_encoder.conv1.weight": rnd((wv, 3, 8, 8)),
        "text_encoder.positional_embedding": rnd((77, w)),
        "text_encoder.transformer.resblocks.0.attn.in_proj_weight": rnd((3 * w, w)),
        "logit_scale": torch.tensor(4.6),
    }
    for b in range(1, learner.depth_vision):
        state[f"image_encoder.transformer.resblocks.{b}.VPT_shallow"] = rnd(learner.VPT.shape)
        state[f"image_encoder.transformer.resblocks.{b}.attn.in_proj_weight"] = rnd((3 * wv, wv))
    for b in range(1, learner.depth_text):
        state[f"text_encoder.transformer.resblocks.{b}.VPT_shallow"] = rnd(learner.ctx.shape)
    return state


def assert_loaded(learner, ref):
    assert torch.equal(learner.ctx.detach(), ref["prompt_learner.ctx"].float())
    assert torch.equal(learner.VPT.detach(), ref["image_encoder.VPT"])
    for i, p in enumerate(learner.deep_vision_prompts):
        assert torch.equal(p.detach(), ref[f"image_encoder.transformer.resblocks.{i + 1}.VPT_shallow"])
    for i, p in enumerate(learner.deep_text_prompts):
        assert torch.equal(p.detach(), ref[f"text_encoder.transformer.resblocks.{i + 1}.VPT_shallow"])


@pytest.mark.parametrize("layout", ["whole_model", "dassl_checkpoint", "trainable_only"])
def test_loads_the_reference_checkpoint_layout(backbone, layout):
    learner = quiet_build(backbone)
    ref = reference_checkpoint(learner)
    if layout == "dassl_checkpoint":
        payload = {"state_dict": ref, "epoch": 20, "optimizer": {}}
    elif layout == "trainable_only":  # `{n: p for n, p in model.named_parameters() if p.requires_grad}`
        payload = {k: v for k, v in ref.items() if k == "prompt_learner.ctx" or k.endswith(("VPT", "VPT_shallow"))}
    else:
        payload = ref
    learner.load_prompt_state(payload)
    assert_loaded(learner, ref)
    assert learner.ctx.dtype == torch.float32


def test_own_state_round_trips(backbone):
    learner, other = quiet_build(backbone), quiet_build(backbone, seed=9)
    perturb_(learner)
    other.load_prompt_state(learner.prompt_state())
    assert all(torch.equal(v, other.prompt_state()[k]) for k, v in learner.prompt_state().items())


def test_reference_checkpoint_of_another_depth_is_refused_naming_the_keys(backbone):
    deep = quiet_build(backbone)
    shallow = quiet_build(backbone, prompt_depth_text=2, prompt_depth_vision=2)
    before = shallow.prompt_state()
    with pytest.raises(PromptStateError, match=r"image_encoder\.transformer\.resblocks\.2\.VPT_shallow"):
        shallow.load_prompt_state(reference_checkpoint(deep))
    assert all(torch.equal(v, shallow.prompt_state()[k]) for k, v in before.items())  # nothing changed
    with pytest.raises(PromptStateError, match=r"missing keys \['deep_text_prompts.1'"):
        deep.load_prompt_state(reference_checkpoint(shallow))
