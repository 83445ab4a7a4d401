"""ProGrad's learner against its reference layout, built independently from token embeddings, and its state."""

from __future__ import annotations

import pytest
import torch

from tailprompt.prompts import LearnerError, PromptStateError, build_learner
from tailprompt.prompts.prograd import ProGradLearnerConfig, template_init_words

from .conftest import CLASSNAMES, OTHER_CLASSNAMES, TEMPLATE, build

NAMES = [n.replace("_", " ") for n in CLASSNAMES]
PETS = "a type of pet, a photo of a {}."  # ProGrad's OxfordPets template: 8 words, 9 BPE tokens


def embedded(backbone, texts):
    with torch.no_grad():
        return backbone.embed_tokens(backbone.tokenize(texts))


def build_prograd(backbone, template=TEMPLATE, classnames=CLASSNAMES, **overrides):
    torch.manual_seed(0)
    return build_learner("prograd", ProGradLearnerConfig(**overrides), backbone, list(classnames), template)


def test_template_words_fill_the_last_positions_and_zeros_the_rest(backbone):
    learner = build_prograd(backbone)
    ctx = learner.ctx.detach()
    assert ctx.shape == (16, backbone.text_width)
    assert torch.count_nonzero(ctx[:12]) == 0  # zero-initialised, not N(0, 0.02)
    words = embedded(backbone, ["a photo of a"])[0, 1:5]
    assert torch.equal(ctx[12:], words)
    # the whole prompt is "[SOS] 0*12 a photo of a <name> . [EOS]": the plain sentence behind 12 zero vectors
    got = learner.prompt_embeddings().detach()
    plain = embedded(backbone, [f"a photo of a {n}." for n in NAMES])
    assert torch.equal(got[:, 13:], plain[:, 1 : got.shape[1] - 12])
    assert torch.equal(got[:, :1], plain[:, :1])


def test_words_with_more_tokens_than_words_leave_the_extra_tokens_fixed(backbone):
    # "a type of pet, a photo of a": 8 words (the reference's n) but "pet," is 2 tokens, so the context takes
    # the first 8 tokens and the last "a" stays in the fixed suffix, before the class name.
    learner = build_prograd(backbone, template=PETS)
    assert learner.prompt_prefix == "X X X X X X X X a type of pet, a photo of a"
    ctx = learner.ctx.detach()
    assert torch.count_nonzero(ctx[:8]) == 0
    tokens = embedded(backbone, ["a type of pet, a photo of a"])[0]
    assert torch.equal(ctx[8:], tokens[1:9])
    expected = embedded(backbone, [f"X X X X X X X X a type of pet, a photo of a {n}." for n in NAMES])
    expected[:, 1:17] = ctx
    got = learner.prompt_embeddings().detach()
    assert torch.equal(got, expected[:, : got.shape[1]])
    assert torch.equal(got[:, 17], tokens[9].expand(len(NAMES), -1))  # the fixed trailing "a"


def test_text_features_at_init_equal_the_reference_forward(backbone):
    learner = build_prograd(backbone, template=PETS)
    prompts = embedded(backbone, [f"X X X X X X X X a type of pet, a photo of a {n}." for n in NAMES])
    prompts[:, 1:17] = learner.ctx.detach()
    eot = backbone.tokenize([f"X X X X X X X X a type of pet, a photo of a {n}." for n in NAMES]).argmax(-1)
    with torch.no_grad():
        full = backbone.encode_text_from_embeddings(prompts, eot)  # all 77 positions, as the reference
        expected = full / full.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(learner.text_features(), expected, atol=1e-6, rtol=0)


def test_new_label_space_follows_its_template_and_keeps_the_context(backbone):
    learner = build_prograd(backbone, template=PETS)
    with torch.no_grad():
        learner.ctx.add_(0.1)
    ctx = learner.ctx.detach().clone()
    learner.set_classnames(OTHER_CLASSNAMES, TEMPLATE)
    assert learner.prompt_prefix == "X X X X X X X X X X X X a photo of a"
    assert torch.equal(learner.ctx.detach(), ctx)
    assert learner.text_features().shape[0] == len(OTHER_CLASSNAMES)


def test_explicit_words_and_random_init(backbone):
    learner = build_prograd(backbone, ctx_init="a photo of a")  # words given explicitly: same layout
    assert torch.equal(learner.ctx.detach(), build_prograd(backbone).ctx.detach())
    learner.set_classnames(OTHER_CLASSNAMES, PETS)  # explicit words do not follow the template
    assert learner.prompt_prefix == "X X X X X X X X X X X X a photo of a"
    rand = build_prograd(backbone, ctx_init="", n_ctx=16)
    assert rand.prompt_prefix == " ".join(["X"] * 16)
    assert 0.01 < float(rand.ctx.detach().std()) < 0.03


def test_bad_templates_and_settings_are_clear_errors(backbone):
    with pytest.raises(LearnerError, match="ending in ' {}.'"):
        build_prograd(backbone, template="{} texture.")
    with pytest.raises(LearnerError, match="n_ctx=2"):
        build_prograd(backbone, n_ctx=2)
    with pytest.raises(ValueError, match="csc"):
        ProGradLearnerConfig(csc=True)
    assert template_init_words("a centered satellite photo of {}.") == "a centered satellite photo of"


def test_reference_state_dicts_load(backbone):
    learner = build_prograd(backbone)
    ctx = torch.randn(16, backbone.text_width)
    # a Dassl checkpoint of the reference prompt learner: ctx plus the class-name buffers it saves
    learner.load_prompt_state({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(3, 1, 5),
                                              "token_suffix": torch.zeros(3, 60, 5)}, "epoch": 100})
    assert torch.equal(learner.ctx.detach(), ctx)
    assert set(learner.prompt_state()) == {"ctx"}
    with pytest.raises(PromptStateError, match="shape"):
        learner.load_prompt_state({"ctx": torch.zeros(4, backbone.text_width)})


def test_dekg_reference_state_dict_loads_into_the_kgcoop_learner(backbone):
    # cnunlp/DeKg's prompt learner also holds bias_vectors and its second CLIP's image tower
    learner = build("kgcoop", backbone)
    ctx = torch.randn(4, backbone.text_width)
    state = {"ctx": ctx, "bias_vectors": torch.zeros(1, 512), "token_prefix": torch.zeros(3, 1, 5),
             "token_suffix": torch.zeros(3, 70, 5), "image_encoder.conv1.weight": torch.zeros(8, 3, 4, 4),
             "image_encoder.proj": torch.zeros(8, 4)}
    learner.load_prompt_state(state)
    assert torch.equal(learner.ctx.detach(), ctx)
