"""Learners against the reference prompt layouts, built independently from token embeddings."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from tailprompt.cli import UserError
from tailprompt.prompts.cocoop import CoCoOp
from tailprompt.prompts.coop import CoOp
from tailprompt.prompts.maple import MaPLe
from tailprompt.prompts.zeroshot import IMAGENET_TEMPLATES_SELECT

from .conftest import CLASSNAMES, TEMPLATE, build

NAMES = [n.replace("_", " ") for n in CLASSNAMES]


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def reference_text(backbone, texts):
    """Normalised features of plain texts through open_clip's own full-context encode_text."""
    with torch.no_grad():
        return unit(backbone.encode_text(backbone.tokenize(texts), truncate=False))


def embedded(backbone, texts):
    with torch.no_grad():
        return backbone.embed_tokens(backbone.tokenize(texts))


def perturb_(module, scale=0.05, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# ----- CoOp -----


def test_coop_prompt_embeddings_equal_direct_construction(backbone):
    learner = build("coop", backbone)
    perturb_(learner)
    expected = embedded(backbone, [f"a photo of a {n}." for n in NAMES])
    expected[:, 1:5] = learner.ctx.detach()
    got = learner.prompt_embeddings().detach()
    length = int(backbone.tokenize([f"a photo of a {n}." for n in NAMES]).argmax(-1).max()) + 1
    assert got.shape == (len(NAMES), length, backbone.text_width)
    assert torch.equal(got, expected[:, :length])


def test_coop_random_context_replaces_x_placeholders(backbone):
    learner = build("coop", backbone, n_ctx=6, ctx_init="")
    assert learner.ctx.shape == (6, backbone.text_width)
    assert 0.01 < float(learner.ctx.detach().std()) < 0.03  # N(0, 0.02)
    expected = embedded(backbone, [f"X X X X X X {n}." for n in NAMES])
    expected[:, 1:7] = learner.ctx.detach()
    got = learner.prompt_embeddings().detach()
    assert torch.equal(got, expected[:, : got.shape[1]])


def test_coop_class_specific_contexts(backbone):
    learner = build("coop", backbone, n_ctx=2, ctx_init="", csc=True)
    assert learner.ctx.shape == (len(NAMES), 2, backbone.text_width)
    got = learner.prompt_embeddings().detach()
    for k in range(len(NAMES)):
        assert torch.equal(got[k, 1:3], learner.ctx[k].detach())
    with pytest.raises(ValueError, match="csc"):
        learner.set_classnames(["one", "two"], TEMPLATE)
    learner.set_classnames(
        ["x1", "x2", "x3"], TEMPLATE
    )  # same class count: contexts move as in the reference


def test_coop_unperturbed_context_equals_plain_clip_text(backbone):
    learner = build("coop", backbone)
    with torch.no_grad():
        got = learner.text_features()
    torch.testing.assert_close(
        got, reference_text(backbone, [f"a photo of a {n}." for n in NAMES]), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    ("position", "text"),
    [("end", "a photo of a {}."), ("middle", "a photo {} of a."), ("front", "{} a photo of a.")],
)
def test_coop_class_token_positions(backbone, position, text):
    # With the context at its word init, the reference layout of each position is a plain sentence.
    learner = build("coop", backbone, class_token_position=position)
    texts = [text.format(n) for n in NAMES]
    got = learner.prompt_embeddings().detach()
    assert torch.equal(got, embedded(backbone, texts)[:, : got.shape[1]])
    with torch.no_grad():
        torch.testing.assert_close(
            learner.text_features(), reference_text(backbone, texts), atol=1e-6, rtol=0
        )


def test_coop_middle_splits_random_context_around_the_name(backbone):
    learner = build("coop", backbone, n_ctx=3, ctx_init="", class_token_position="middle")
    perturb_(learner)
    ctx = learner.ctx.detach()
    got = learner.prompt_embeddings().detach()
    plain = embedded(backbone, [f"X X X {n}." for n in NAMES])
    for k, n_tok in enumerate([1, 2, 3]):  # "cat", "golden retriever", "sea or lake"
        assert learner.name_lens[k] == n_tok
        name = plain[k, 4 : 4 + n_tok]
        expected = torch.cat([plain[k, :1], ctx[:1], name, ctx[1:], plain[k, 4 + n_tok : got.shape[1]]])
        assert torch.equal(got[k], expected)


# ----- CoCoOp -----


def reference_cocoop_loop(learner, backbone, image_feats):
    """The reference forward: one text-tower call per image with that image's shifted context."""
    out = []
    for f in image_feats:
        ctx = learner.ctx + learner.meta_net(f.unsqueeze(0))  # [M, W]
        k = learner.token_prefix.shape[0]
        prompts = torch.cat(
            [learner.token_prefix, ctx.unsqueeze(0).expand(k, -1, -1), learner.token_suffix], 1
        )
        out.append(unit(backbone.encode_text_from_embeddings(prompts, learner.eot)))
    return torch.stack(out)


def test_cocoop_vectorised_equals_per_image_loop(backbone, images):
    learner = build("cocoop", backbone)
    perturb_(learner)
    with torch.no_grad():
        feats = unit(backbone.encode_image(images))
        expected = reference_cocoop_loop(learner, backbone, feats)
        torch.testing.assert_close(learner.text_features(feats), expected, atol=1e-6, rtol=0)
        learner.max_sequences_per_call = len(CLASSNAMES)  # one image per text-tower call
        torch.testing.assert_close(learner.text_features(feats), expected, atol=1e-6, rtol=0)


def test_cocoop_meta_net_shape_and_zero_shift(backbone, images):
    learner = build("cocoop", backbone)
    d, w = backbone.embed_dim, backbone.text_width
    assert learner.meta_net.linear1.weight.shape == (d // 16, d)
    assert learner.meta_net.linear2.weight.shape == (w, d // 16)
    with torch.no_grad():
        learner.meta_net.linear2.weight.zero_()
        learner.meta_net.linear2.bias.zero_()
        feats = unit(backbone.encode_image(images))
        got = learner.text_features(feats)
    plain = reference_text(backbone, [f"a photo of a {n}." for n in NAMES])
    for b in range(images.shape[0]):
        torch.testing.assert_close(got[b], plain, atol=1e-6, rtol=0)


def test_cocoop_needs_image_features(backbone):
    learner = build("cocoop", backbone)
    assert isinstance(learner, CoCoOp)
    with pytest.raises(ValueError, match="instance-conditioned"):
        learner.text_features(None)


# ----- MaPLe -----


def manual_text_tower(backbone, x, eot, deep):
    """Full-context text tower with MaPLe's replacement of positions 1..n in blocks 1..len(deep)."""
    x = x + backbone.positional_embedding
    for i, block in enumerate(backbone.text_blocks):
        if 1 <= i <= len(deep):
            n = deep[i - 1].shape[0]
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n :]], 1)
        x = block(x, attn_mask=backbone.attn_mask)
    x = backbone.ln_final(x)[torch.arange(x.shape[0]), eot]
    return unit(x @ backbone.text_projection)


def manual_vision_tower(backbone, images, shared, deep):
    """ViT with prompts appended after CLS + patches (before ln_pre), replaced in blocks 1..len(deep)."""
    v = backbone.visual
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = (
        torch.cat([v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], 1)
        + v.positional_embedding
    )
    n = shared.shape[0]
    x = torch.cat([x, shared.expand(x.shape[0], -1, -1)], 1)
    x = v.ln_pre(x)
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :-n], deep[i - 1].expand(x.shape[0], -1, -1)], 1)
        x = block(x)
    return unit(v.ln_post(x[:, 0]) @ v.proj)


def test_maple_initialisation_follows_the_reference(backbone):
    learner = build("maple", backbone, prompt_depth=3)
    texts = [f"a photo of a {n}." for n in NAMES]
    # 2 vectors from "a photo"; "of a" stays as fixed tokens after them
    assert torch.equal(learner.ctx.detach(), embedded(backbone, ["a photo"])[0, 1:3])
    got = learner.prompt_embeddings().detach()
    assert torch.equal(got, embedded(backbone, texts)[:, : got.shape[1]])
    assert torch.equal(learner.tokenized_prompts, backbone.tokenize(texts)[:, : got.shape[1]])
    assert learner.proj.weight.shape == (backbone.vision_width, backbone.text_width)
    assert len(learner.compound_prompts_text) == 2
    w0 = learner.compound_prompt_projections[0].weight
    assert all(torch.equal(p.weight, w0) for p in learner.compound_prompt_projections)  # deep copies
    assert not torch.equal(learner.proj.weight, w0)
    stacked = torch.stack(list(learner.compound_prompts_text)).detach()
    assert 0.01 < float(stacked.std()) < 0.03


def test_maple_depth_one_text_equals_plain_clip_text(backbone):
    learner = build("maple", backbone, prompt_depth=1)
    assert len(learner.compound_prompts_text) == 0 and len(learner.compound_prompt_projections) == 0
    with torch.no_grad():
        torch.testing.assert_close(
            learner.text_features(),
            reference_text(backbone, [f"a photo of a {n}." for n in NAMES]),
            atol=1e-6,
            rtol=0,
        )


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_maple_sequence_layout_in_both_towers(backbone, images, depth):
    learner = build("maple", backbone, prompt_depth=depth)
    perturb_(learner)
    texts = [f"a photo of a {n}." for n in NAMES]
    tokens = backbone.tokenize(texts)
    with torch.no_grad():
        x = backbone.embed_tokens(tokens)
        x[:, 1:3] = learner.ctx
        deep_text = list(learner.compound_prompts_text)
        expected_text = manual_text_tower(backbone, x, tokens.argmax(-1), deep_text)
        shared = learner.proj(learner.ctx)
        deep_vision = [
            f(p) for f, p in zip(learner.compound_prompt_projections, learner.compound_prompts_text)
        ]
        expected_image = manual_vision_tower(backbone, images, shared, deep_vision)
        torch.testing.assert_close(learner.text_features(), expected_text, atol=1e-5, rtol=0)
        torch.testing.assert_close(learner.image_features(images), expected_image, atol=1e-5, rtol=0)
        if depth == 1:  # no vision prompts at all would be plain CLIP; the appended tokens must matter
            plain = unit(backbone.encode_image(images))
            assert not torch.allclose(learner.image_features(images), plain, atol=1e-4)


def test_maple_fp16_rounding_matches_the_reference_half_casts(backbone, images):
    """`round_prompts_fp16`: the reference's `.half()` on the deep prompts and on `proj(ctx)`, promoted back
    to fp32 by `torch.cat`; the layer-0 text context is not rounded."""
    learner = build("maple", backbone, prompt_depth=3, round_prompts_fp16=True)
    perturb_(learner)
    half = lambda t: t.half().float()  # noqa: E731
    texts = [f"a photo of a {n}." for n in NAMES]
    tokens = backbone.tokenize(texts)
    with torch.no_grad():
        x = backbone.embed_tokens(tokens)
        x[:, 1:3] = learner.ctx
        deep_text = [half(p) for p in learner.compound_prompts_text]
        expected_text = manual_text_tower(backbone, x, tokens.argmax(-1), deep_text)
        deep_vision = [
            half(f(p)) for f, p in zip(learner.compound_prompt_projections, learner.compound_prompts_text)
        ]
        expected_image = manual_vision_tower(backbone, images, half(learner.proj(learner.ctx)), deep_vision)
        torch.testing.assert_close(learner.text_features(), expected_text, atol=1e-5, rtol=0)
        torch.testing.assert_close(learner.image_features(images), expected_image, atol=1e-5, rtol=0)
        plain = build("maple", backbone, prompt_depth=3)
        plain.load_prompt_state(learner.prompt_state())
        assert not torch.equal(plain.text_features(), learner.text_features())  # off by default


def test_maple_depth_beyond_backbone_is_clamped_with_a_warning(backbone):
    with pytest.warns(UserWarning, match="prompt_depth=9"):
        learner = build("maple", backbone, prompt_depth=9)
    assert learner.prompt_depth == backbone.text_layers == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build("maple", backbone, prompt_depth=3).prompt_depth == 3


def test_maple_random_init_beyond_four_tokens(backbone):
    # The reference uses ctx_init only for n_ctx <= 4; otherwise "X" placeholders and N(0, 0.02).
    learner = build("maple", backbone, n_ctx=5, prompt_depth=1)
    assert learner.prompt_prefix == "X X X X X"
    assert 0.01 < float(learner.ctx.detach().std()) < 0.03
    three = build("maple", backbone, n_ctx=3, prompt_depth=1)
    assert torch.equal(three.ctx.detach(), embedded(backbone, ["a photo of"])[0, 1:4])


def test_maple_refuses_a_convolutional_image_tower():
    conv = types.SimpleNamespace(has_vit=False, vision_width=None, arch="embedded")
    with pytest.raises(UserError, match="convolutional image tower"):  # one line from the CLI
        MaPLe(MaPLe.config_cls(), conv, CLASSNAMES, TEMPLATE)


# ----- zero-shot -----


def test_zeroshot_single_template_equals_clip(backbone):
    learner = build("zeroshot", backbone)
    torch.testing.assert_close(
        learner.text_features(),
        reference_text(backbone, [TEMPLATE.format(n) for n in NAMES]),
        atol=1e-6,
        rtol=0,
    )
    learner.set_classnames(CLASSNAMES, "{} texture.")
    torch.testing.assert_close(
        learner.text_features(), reference_text(backbone, [f"{n} texture." for n in NAMES]), atol=1e-6, rtol=0
    )


def test_zeroshot_ensemble_averages_normalised_features(backbone):
    learner = build("zeroshot", backbone, ensemble=True)
    templates = list(IMAGENET_TEMPLATES_SELECT) + [TEMPLATE]
    assert learner.templates == templates
    mean = torch.stack([reference_text(backbone, [t.format(n) for n in NAMES]) for t in templates]).mean(0)
    torch.testing.assert_close(learner.text_features(), unit(mean), atol=1e-6, rtol=0)
    only = build("zeroshot", backbone, ensemble=True, add_dataset_template=False)
    assert only.templates == list(IMAGENET_TEMPLATES_SELECT)
    assert not torch.allclose(only.text_features(), learner.text_features())


def test_zeroshot_rejects_a_template_without_placeholder(backbone):
    with pytest.raises(ValueError, match="exactly one"):
        build("zeroshot", backbone).set_classnames(CLASSNAMES, "a photo.")


def test_coop_and_kgcoop_share_the_learner(backbone):
    coop, kg = build("coop", backbone), build("kgcoop", backbone)
    assert isinstance(kg, CoOp) and isinstance(coop, CoOp)
    with torch.no_grad():
        assert torch.equal(coop.text_features(), kg.text_features())
