"""CoPrompt's learner against an independent re-implementation of the reference forward
(ShuvenduRoy/CoPrompt `trainers/coprompt.py` `CustomCLIP.forward`, `clip/model.py` MaPLe towers)."""

from __future__ import annotations

import pytest
import torch

from tailprompt.prompts import LEARNERS, PromptStateError
from tailprompt.prompts.coprompt import CoPrompt, CoPromptConfig
from tailprompt.prompts.maple import MaPLe

from .conftest import CLASSNAMES, OTHER_CLASSNAMES, build

NAMES = [n.replace("_", " ") for n in CLASSNAMES]


def perturb_(module, scale=0.05, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def reference_text_encoder(backbone, prompts, tokenized, deep):
    """`TextEncoder.forward`: full 77-token context, MaPLe replacement of positions 1..n in blocks 1..J-1."""
    x = prompts + backbone.positional_embedding
    for i, block in enumerate(backbone.text_blocks):
        if 1 <= i <= len(deep):
            n = deep[i - 1].shape[0]
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n :]], 1)
        x = block(x, attn_mask=backbone.attn_mask)
    x = backbone.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ backbone.text_projection


def reference_image_encoder(backbone, images, shared_ctx, deep):
    """`VisionTransformer_MaPLe.forward`: prompts appended after CLS + patches, replaced in blocks 1..J-1."""
    v = backbone.visual
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], 1) + v.positional_embedding
    n = shared_ctx.shape[0]
    x = v.ln_pre(torch.cat([x, shared_ctx.expand(x.shape[0], -1, -1)], 1))
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :-n], deep[i - 1].expand(x.shape[0], -1, -1)], 1)
        x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


def reference_adapter(x, fc0, fc2):
    """`Adapter.fc`: Linear(no bias) -> ReLU -> Linear(no bias) -> ReLU."""
    return torch.relu(torch.relu(x @ fc0.T) @ fc2.T)


def reference_logits(learner, backbone, images, half=False):
    """`CustomCLIP.forward` at test time: prompted towers, residual adapters, normalise, scaled cosine.

    `half`: the reference's `.half()` on the deep prompts and the projected layer-0 vision prompt, which
    `torch.cat` promotes back to fp32 next to the fp32 activations.
    """
    pl = learner
    rounded = (lambda t: t.half().float()) if half else (lambda t: t)
    texts = [f"{pl.prompt_prefix} {n}." for n in NAMES]
    tokenized = backbone.tokenize(texts)  # full context, as the reference keeps it
    embedding = backbone.embed_tokens(tokenized)
    prompts = torch.cat([embedding[:, :1], pl.ctx.expand(len(NAMES), -1, -1), embedding[:, 1 + pl.n_ctx :]], 1)
    deep_text = [rounded(p) for p in pl.compound_prompts_text]
    deep_vision = [rounded(layer(p)) for layer, p in zip(pl.compound_prompt_projections, pl.compound_prompts_text)]
    text = reference_text_encoder(backbone, prompts, tokenized, deep_text)
    image = reference_image_encoder(backbone, images, rounded(pl.proj(pl.ctx)), deep_vision)
    sd = dict(learner.named_parameters())
    x_a = reference_adapter(image, sd["adapter_image.fc.0.weight"], sd["adapter_image.fc.2.weight"])
    image = 0.1 * x_a + (1 - 0.1) * image
    x_b = reference_adapter(text, sd["adapter_text.fc.0.weight"], sd["adapter_text.fc.2.weight"])
    text = 0.2 * x_b + (1 - 0.2) * text
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return backbone.logit_scale * image @ text.t(), image, text


@pytest.mark.parametrize("depth", [1, 3])
def test_forward_equals_the_reference_forward(backbone, images, depth):
    learner = build("coprompt", backbone, prompt_depth=depth)
    perturb_(learner)
    with torch.no_grad():
        logits, image, text = reference_logits(learner, backbone, images)
        got_text, got_image = learner.text_features(), learner.image_features(images)
    torch.testing.assert_close(got_text, text, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_image, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(backbone.logit_scale * got_image @ got_text.T, logits, atol=1e-3, rtol=0)


def test_fp16_prompt_rounding_reproduces_the_reference_fp32_run(backbone, images):
    learner = build("coprompt", backbone, prompt_depth=3, round_prompts_fp16=True)
    perturb_(learner)
    with torch.no_grad():
        _, image, text = reference_logits(learner, backbone, images, half=True)
        torch.testing.assert_close(learner.text_features(), text, atol=1e-6, rtol=0)
        torch.testing.assert_close(learner.image_features(images), image, atol=1e-6, rtol=0)
        # the rounding is real: the plain fp32 forward differs from it
        _, plain_image, plain_text = reference_logits(learner, backbone, images, half=False)
        assert not torch.equal(plain_text, text) and not torch.equal(plain_image, image)
        shared, deep = learner.vision_prompts()
        assert all(torch.equal(t, t.half().float()) for t in [shared, *deep, *learner.deep_text_prompts()])
        assert not torch.equal(learner.ctx, learner.ctx.half().float())  # layer-0 text context stays fp32


def test_adapters_matter_and_zero_adapters_give_maple(backbone, images):
    learner = build("coprompt", backbone, prompt_depth=3)
    maple = build("maple", backbone, prompt_depth=3)
    perturb_(learner)
    maple.load_prompt_state({k: v for k, v in learner.prompt_state().items() if not k.startswith("adapter_")})
    with torch.no_grad():
        assert not torch.allclose(learner.text_features(), maple.text_features(), atol=1e-4)
        for adapter in (learner.adapter_image, learner.adapter_text):
            adapter.fc[2].weight.zero_()  # A(f) = 0: only the (1 - ratio) * f branch remains, a pure rescale
        torch.testing.assert_close(learner.text_features(), maple.text_features(), atol=1e-6, rtol=0)
        torch.testing.assert_close(learner.image_features(images), maple.image_features(images), atol=1e-6, rtol=0)


def test_initialisation_follows_the_reference_order(backbone):
    """MaPLe's prompts first, then `Adapter(D, 4)` for the image, then for the text (global RNG order)."""
    learner = build("coprompt", backbone, prompt_depth=3, seed=7)
    torch.manual_seed(7)
    maple = MaPLe(LEARNERS.get("maple").config_cls(prompt_depth=3), backbone, list(CLASSNAMES), "{}")
    d = backbone.embed_dim
    expected = {}
    for tower in ("image", "text"):
        expected[f"adapter_{tower}.fc.0.weight"] = torch.nn.Linear(d, d // 4, bias=False).weight
        expected[f"adapter_{tower}.fc.2.weight"] = torch.nn.Linear(d // 4, d, bias=False).weight
    state = learner.prompt_state()
    for k, v in maple.prompt_state().items():
        assert torch.equal(state[f"prompt_learner.{k}"], v)
    for k, v in expected.items():
        assert torch.equal(state[k], v.detach()), k
    assert set(state) == {f"prompt_learner.{k}" for k in maple.prompt_state()} | set(expected)


def reference_whole_model_state(learner):
    """What the reference saves: `CustomCLIP.state_dict()` in a Dassl checkpoint (frozen copies included)."""
    g = torch.Generator().manual_seed(5)
    own = {k: torch.randn(v.shape, generator=g).half() for k, v in learner.prompt_state().items()}
    state = dict(own)  # prompt_state already holds the reference's names
    state.update({
        "prompt_learner.token_prefix": torch.zeros(3, 1, 64),
        "prompt_learner.token_suffix": torch.zeros(3, 74, 64),
        "image_encoder.conv1.weight": torch.zeros(2),
        "text_encoder.positional_embedding": torch.zeros(2),
        "logit_scale": torch.zeros(()),
        "model_distill.visual.conv1.weight": torch.zeros(2),
        "model_distill.logit_scale": torch.zeros(()),
    })
    return own, {"state_dict": state, "epoch": 8, "optimizer": {}}


def test_loads_a_reference_whole_model_checkpoint(backbone):
    learner = build("coprompt", backbone, prompt_depth=3)
    own, checkpoint = reference_whole_model_state(learner)
    assert {"adapter_image.fc.0.weight", "adapter_text.fc.2.weight", "prompt_learner.ctx",
            "prompt_learner.proj.weight"} <= set(own)
    learner.load_prompt_state(checkpoint)
    for k, v in learner.prompt_state().items():
        assert v.dtype == torch.float32 and torch.equal(v, own[k].float()), k
    again = build("coprompt", backbone, prompt_depth=3)
    again.load_prompt_state(learner.prompt_state())  # our own layout round-trips
    for k, v in again.prompt_state().items():
        assert torch.equal(v, own[k].float())
    bare = {k.removeprefix("prompt_learner."): v for k, v in learner.prompt_state().items()}
    again.load_prompt_state(bare)  # prompt keys without the prefix (run files written before the prefix)
    assert all(torch.equal(v, own[k].float()) for k, v in again.prompt_state().items())


def test_a_checkpoint_without_adapters_names_them(backbone):
    learner = build("coprompt", backbone, prompt_depth=3)
    _, checkpoint = reference_whole_model_state(learner)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("adapter_text.")}
    missing = r"missing keys \['adapter_text.fc.0.weight', 'adapter_text.fc.2.weight'\]"
    with pytest.raises(PromptStateError, match=missing):
        learner.load_prompt_state(state)


def test_new_classes_keep_every_trained_parameter(backbone, images):
    learner = build("coprompt", backbone, prompt_depth=3)
    perturb_(learner)
    before = learner.prompt_state()
    learner.set_classnames(list(OTHER_CLASSNAMES), "a photo of a {}.", seen=False)
    with torch.no_grad():
        assert learner.text_features().shape == (len(OTHER_CLASSNAMES), backbone.embed_dim)
    after = learner.prompt_state()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_config_defaults_and_validation():
    cfg = CoPromptConfig()
    assert (cfg.n_ctx, cfg.ctx_init, cfg.prompt_depth) == (2, "a photo of a", 9)
    assert (cfg.image_adapter_ratio, cfg.text_adapter_ratio, cfg.adapter_reduction) == (0.1, 0.2, 4)
    assert LEARNERS.get("coprompt") is CoPrompt and CoPrompt.uses_image_tower
    with pytest.raises(ValueError, match="text_adapter_ratio"):
        CoPromptConfig(text_adapter_ratio=1.5)
    with pytest.raises(ValueError, match="prompt_depth"):
        CoPromptConfig(prompt_depth=0)
