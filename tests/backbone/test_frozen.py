"""FrozenVLM: attributes, tokenizer, the cut-length text path, deep prompts, image prompts, preprocessing."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tailprompt.backbone import BackboneError, load_backbone
from tailprompt.backbone.transforms import CLIP_MEAN, CLIP_STD
from tailprompt.cli import UserError

TOL = 1e-5


def test_tiny_vit_exposes_its_shape_and_is_frozen(tiny):
    assert (tiny.context_length, tiny.image_size, tiny.embed_dim) == (77, 32, 64)
    assert (tiny.text_width, tiny.vision_width, tiny.has_vit) == (64, 64, True)
    assert (tiny.text_layers, tiny.vision_layers) == (3, 3)
    assert tiny.identity == "tiny-vit@random:0"
    assert tiny.logit_scale == pytest.approx(math.exp(float(tiny.model.logit_scale)))
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.training and not any(m.training for m in tiny.modules())
    assert tiny.dtype == torch.float32 and tiny.device.type == "cpu"


def test_seed_fixes_the_init_without_touching_the_callers_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_backbone("tiny-vit", seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = load_backbone("tiny-vit", seed=5)
    c = load_backbone("tiny-vit", seed=6)
    w = "token_embedding.weight"
    assert torch.equal(a.model.state_dict()[w], b.model.state_dict()[w])
    assert not torch.equal(a.model.state_dict()[w], c.model.state_dict()[w])
    assert (a.identity, c.identity) == ("tiny-vit@random:5", "tiny-vit@random:6")


def test_tokenize_places_start_text_and_end_tokens(tiny):
    bpe = tiny._tokenizer()
    tokens = tiny.tokenize(["a photo of a cat.", "hello"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    n_cat = len(bpe.encode("a photo of a cat."))
    assert tokens[0, 0] == bpe.sot_token_id
    assert tiny.eot_positions(tokens).tolist() == [n_cat + 1, len(bpe.encode("hello")) + 1]
    assert tokens[0, n_cat + 1] == bpe.eot_token_id and tokens[0, n_cat + 2 :].eq(0).all()


def test_tokenize_refuses_a_prompt_longer_than_the_context(tiny):
    long_prompt = "a photo of a " + " ".join(["very"] * 80) + " cat."
    with pytest.raises(BackboneError, match="needs 88 tokens .* context of 77") as err:
        tiny.tokenize(["fine", long_prompt])
    assert "very very" in str(err.value)
    assert isinstance(err.value, UserError)  # the CLI prints it as one line
    with pytest.raises(BackboneError, match=r"prompt 'X X .* \.\.\. .* X cat\.' needs 1004 tokens") as err:
        tiny.tokenize(" ".join(["X"] * 1000) + " cat.")  # n_ctx=1000 random contexts: quoted cut, not whole
    assert len(str(err.value)) < 300


def test_tokenize_warns_about_words_outside_the_vocabulary(tiny, monkeypatch):
    monkeypatch.setattr(tiny, "vocabulary", {"a", "photo", "of", "red", "circle"})
    with pytest.warns(UserWarning, match="outside it .*: dog, zebra$"):
        tiny.tokenize(["a photo of a red dog.", "a zebra"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.tokenize(["A photo of a red circle."])


def test_cut_length_text_encoding_equals_open_clip_full_context(tiny, tokens):
    full = tiny.model.encode_text(tokens)  # open_clip's own path, 77 positions
    via_embeddings = tiny.encode_text_from_embeddings(tiny.embed_tokens(tokens), tiny.eot_positions(tokens))
    assert via_embeddings.shape == (3, 64)
    assert (via_embeddings - full).abs().max() <= TOL
    assert (tiny.encode_text(tokens) - full).abs().max() <= TOL
    assert torch.equal(tiny.encode_text(tokens, truncate=False), full)


def test_tokens_after_the_end_of_text_cannot_change_the_feature(tiny, tokens):
    # the causal-tower property the cut relies on: garbage after EOT is invisible
    x = tiny.embed_tokens(tokens)
    eot = tiny.eot_positions(tokens)
    noisy = x.clone()
    for i, e in enumerate(eot.tolist()):
        noisy[i, e + 1 :] = torch.randn_like(noisy[i, e + 1 :])
    a = tiny.encode_text_from_embeddings(x, eot, truncate=False)
    b = tiny.encode_text_from_embeddings(noisy, eot, truncate=False)
    assert (a - b).abs().max() <= TOL


def _deep_text(n: int, count: int, k: int | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    shape = (n, 64) if k is None else (k, n, 64)
    return [torch.randn(*shape, generator=g) for _ in range(count)]


def _manual_text_reference(vlm, x, eot, deep):
    """Full-context text pass written out with the open_clip modules and in-place replacement (MaPLe)."""
    h = x + vlm.model.positional_embedding
    for i, block in enumerate(vlm.model.transformer.resblocks):
        if 1 <= i <= len(deep):
            h = h.clone()
            n = deep[i - 1].shape[-2]
            h[:, 1 : 1 + n] = deep[i - 1]
        h = block(h, attn_mask=vlm.model.attn_mask)
    h = vlm.model.ln_final(h)
    return h[torch.arange(len(eot)), eot] @ vlm.model.text_projection


@pytest.mark.parametrize("per_class", [False, True])
def test_deep_text_prompts_replace_positions_after_the_start_token(tiny, tokens, per_class):
    x, eot = tiny.embed_tokens(tokens), tiny.eot_positions(tokens)
    deep = _deep_text(n=2, count=2, k=3 if per_class else None)
    cut = tiny.encode_text_from_embeddings(x, eot, deep)
    full = tiny.encode_text_from_embeddings(x, eot, deep, truncate=False)
    reference = _manual_text_reference(tiny, x, eot, deep)
    assert (cut - full).abs().max() <= TOL
    assert (cut - reference).abs().max() <= TOL
    assert (cut - tiny.encode_text_from_embeddings(x, eot)).abs().max() > 1e-3  # the prompts matter
    # a prompt only at block 1 differs from one at blocks 1 and 2: each entry reaches its own block
    one = tiny.encode_text_from_embeddings(x, eot, deep[:1])
    assert (one - cut).abs().max() > 1e-3
    assert (one - _manual_text_reference(tiny, x, eot, deep[:1])).abs().max() <= TOL


def test_deep_text_prompts_longer_than_a_short_sequence_are_clipped_exactly(tiny):
    tokens = tiny.tokenize(["x", "y"])  # eot at 2: positions 1..4 of a 4-token prompt mostly lie past the cut
    x, eot = tiny.embed_tokens(tokens), tiny.eot_positions(tokens)
    deep = _deep_text(n=4, count=2)
    cut = tiny.encode_text_from_embeddings(x, eot, deep)
    full = tiny.encode_text_from_embeddings(x, eot, deep, truncate=False)
    assert (cut - full).abs().max() <= TOL


def test_too_many_deep_text_prompts_is_an_error(tiny, tokens):
    x, eot = tiny.embed_tokens(tokens), tiny.eot_positions(tokens)
    with pytest.raises(ValueError, match="3 deep text prompts .* 3 blocks.* at most 2"):
        tiny.encode_text_from_embeddings(x, eot, _deep_text(n=2, count=3))


def test_gradients_through_the_cut_equal_the_full_context_ones(tiny, tokens):
    eot = tiny.eot_positions(tokens)
    grads = []
    for truncate in (True, False):
        x = tiny.embed_tokens(tokens).detach().requires_grad_(True)
        deep = [p.requires_grad_(True) for p in _deep_text(n=2, count=2)]
        tiny.encode_text_from_embeddings(x, eot, deep, truncate=truncate).pow(2).sum().backward()
        grads.append((x.grad, deep[0].grad))
    (gx_cut, gd_cut), (gx_full, gd_full) = grads
    # relative: the squared-norm loss makes gradients O(100)
    assert (gx_cut - gx_full).abs().max() <= TOL * gx_full.abs().max()
    assert (gd_cut - gd_full).abs().max() <= TOL * gd_full.abs().max()
    assert gx_cut[:, int(eot.max()) + 1 :].eq(0).all()
    assert gx_cut[0, : int(eot[0]) + 1].abs().sum() > 0 and gd_cut.abs().sum() > 0


def test_image_path_without_prompts_equals_encode_image(tiny, images):
    plain = tiny.encode_image(images)
    assert plain.shape == (3, 64)
    assert (tiny.encode_image_with_prompts(images) - plain).abs().max() <= TOL


def _manual_vision_reference(vlm, images, prompts, deep):
    """open_clip's own `_embeds` (which ends in ln_pre) + ln_pre(prompts) appended, MaPLe-style blocks."""
    v = vlm.model.visual
    h = torch.cat([v._embeds(images), v.ln_pre(prompts).expand(images.shape[0], -1, -1)], dim=1)
    n = prompts.shape[0]
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i <= len(deep):
            h = h.clone()
            h[:, -n:] = deep[i - 1]
        h = block(h)
    return v.ln_post(h[:, 0]) @ v.proj


def test_vision_prompts_are_appended_and_deep_prompts_replace_them(tiny, images):
    g = torch.Generator().manual_seed(3)
    prompts = torch.randn(2, 64, generator=g)
    deep = [torch.randn(2, 64, generator=g) for _ in range(2)]
    plain = tiny.encode_image(images)
    shallow = tiny.encode_image_with_prompts(images, prompts)
    assert (shallow - plain).abs().max() > 1e-3
    assert (shallow - _manual_vision_reference(tiny, images, prompts, [])).abs().max() <= TOL
    prompted = tiny.encode_image_with_prompts(images, prompts, deep)
    assert (prompted - shallow).abs().max() > 1e-3
    assert (prompted - _manual_vision_reference(tiny, images, prompts, deep)).abs().max() <= TOL
    per_image = tiny.encode_image_with_prompts(
        images, prompts.expand(3, -1, -1), [d.expand(3, -1, -1) for d in deep]
    )
    assert (per_image - prompted).abs().max() <= TOL


def test_vision_prompt_errors(tiny, images):
    p = torch.zeros(2, 64)
    with pytest.raises(ValueError, match="pass `prompts`"):
        tiny.encode_image_with_prompts(images, None, [p])
    with pytest.raises(ValueError, match="has 3 tokens, `prompts` has 2"):
        tiny.encode_image_with_prompts(images, p, [torch.zeros(3, 64)])
    with pytest.raises(ValueError, match="at most 2"):
        tiny.encode_image_with_prompts(images, p, [p, p, p])


def test_conv_tower_backbone_has_no_vision_prompts(images):
    embedded = load_backbone("embedded") if _embedded_weights_exist() else _random_embedded()
    assert (embedded.has_vit, embedded.vision_width, embedded.vision_layers) == (False, None, None)
    assert (embedded.embed_dim, embedded.context_length, embedded.text_width) == (128, 32, 128)
    assert embedded.encode_image(images).shape == (3, 128)
    with pytest.raises(BackboneError, match="convolutional image tower"):
        embedded.encode_image_with_prompts(images, torch.zeros(2, 16))
    with pytest.raises(BackboneError, match="context of 32"):
        embedded.tokenize([" ".join(["word"] * 40)])
    # BatchNorm must keep its running statistics even when a parent module calls .train()
    embedded.train()
    before = embedded.encode_image(images)
    embedded.encode_image(images * 3 + 1)
    assert torch.equal(embedded.encode_image(images), before)


def _embedded_weights_exist() -> bool:
    from tailprompt.backbone.architectures import embedded_weights_path

    return embedded_weights_path().is_file()


def _random_embedded():
    with pytest.warns(UserWarning, match="embedded backbone weights not found .* random weights"):
        vlm = load_backbone("embedded")
    assert vlm.identity == "embedded@random:0"
    return vlm


def test_preprocessing_resizes_crops_and_normalises(tiny):
    colour = (200, 100, 50)
    image = Image.new("RGB", (60, 40), colour)
    out = tiny.preprocess_eval(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (torch.tensor(colour) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-2)
    # a left/right gradient: eval keeps orientation, the train flip mirrors it about half the time
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))).convert("L")
    assert tiny.preprocess_eval(ramp)[0, 16, 0] < tiny.preprocess_eval(ramp)[0, 16, -1]
    torch.manual_seed(0)
    views = [tiny.preprocess_train(ramp) for _ in range(12)]
    assert all(v.shape == (3, 32, 32) for v in views)
    flipped = sum(bool(v[0, 16, 0] > v[0, 16, -1]) for v in views)
    assert 0 < flipped < 12
    assert "s32" in tiny.preprocess_id and "rrc0.08-1" in tiny.preprocess_id
