"""Precision policy: what `auto` resolves to, fp32 bit-identical to the plain path, bf16 within tolerance."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from tailprompt.backbone import load_backbone, precision
from tailprompt.backbone.precision import autocast_context, cpu_flags, resolve_precision
from tailprompt.data.features import FeatureCache, encode_batch, space_key
from tailprompt.utils import stable_hash

# bf16 keeps 8 bits of mantissa: on tiny-vit normalised features move by ~3e-3 (measured), cosines by ~4e-5.
BF16_FEATURE_TOL = 1e-2
BF16_COSINE_TOL = 1e-3


@pytest.mark.parametrize(
    ("setting", "device", "native", "expected"),
    [
        ("auto", "cpu", True, "bf16"),
        ("auto", "cpu", False, "fp32"),
        ("auto", "cuda", False, "bf16"),
        ("fp32", "cuda", True, "fp32"),
        ("bf16", "cpu", False, "bf16"),
    ],
)
def test_auto_uses_bf16_where_the_hardware_multiplies_it(monkeypatch, setting, device, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision(setting, device) == expected


def test_unknown_precision_names_the_field():
    with pytest.raises(ValueError, match=r"backbone.precision: expected one of auto, fp32, bf16, got 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert {"avx512_bf16", "amx_tile"} <= cpu_flags(info) and "amx_bf16" not in cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_autocast_context_is_bf16_autocast_or_nothing():
    assert isinstance(autocast_context("cpu", "fp32"), contextlib.nullcontext)
    with autocast_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert isinstance(load_backbone("tiny-vit").autocast(), contextlib.nullcontext)  # fp32 here (conftest)


def test_load_backbone_resolves_and_records_the_precision():
    assert load_backbone("tiny-vit").precision == "fp32"  # auto on a CPU without native bf16 (conftest)
    vlm = load_backbone("tiny-vit", precision="bf16")
    assert vlm.precision == "bf16" and vlm.dtype == torch.float32  # embeddings (the input dtype) stay fp32
    assert "precision=bf16" in repr(vlm)


def test_fp32_is_bit_identical_to_the_plain_path(tiny, images, tokens):
    with torch.no_grad():
        plain_image, plain_text = tiny.encode_image(images), tiny.encode_text(tokens)
        with tiny.autocast():
            assert torch.equal(tiny.encode_image(images), plain_image)
            assert torch.equal(tiny.encode_text(tokens), plain_text)
    assert torch.equal(encode_batch(tiny, images), plain_image)


def test_bf16_stays_within_the_stated_tolerance(tiny, images, tokens):
    vlm = load_backbone("tiny-vit", precision="bf16")  # same weights as `tiny` (seed 0)
    with torch.no_grad():
        ref_image = F.normalize(tiny.encode_image(images), dim=-1)
        ref_text = F.normalize(tiny.encode_text(tokens), dim=-1)
        with vlm.autocast():
            image = F.normalize(vlm.encode_image(images).float(), dim=-1)
            text = F.normalize(vlm.encode_text(tokens).float(), dim=-1)
    frozen = vlm.image_features(images)  # the frozen encoder runs under the backbone's own precision
    assert torch.allclose(frozen, image, atol=1e-6) and not torch.equal(frozen, tiny.image_features(images))
    cached = F.normalize(encode_batch(vlm, images), dim=-1)
    assert cached.dtype == torch.float32  # stored features stay fp32
    for got, ref in ((image, ref_image), (text, ref_text), (cached, ref_image)):
        assert 0 < (got - ref).abs().max() <= BF16_FEATURE_TOL  # really bf16, and close
        assert (1 - (got * ref).sum(-1)).max() <= BF16_COSINE_TOL


def test_bf16_features_get_their_own_cache_space(tiny, tmp_path):
    cache = FeatureCache(tmp_path)
    bf16 = load_backbone("tiny-vit", precision="bf16")
    assert cache.space_dir(bf16) != cache.space_dir(tiny)
    # fp32 keeps the key it had before the policy existed: caches filled then stay valid
    legacy = {"format": 1, "backbone": tiny.identity, "preprocess": tiny.preprocess_id}
    assert space_key(tiny) == legacy and cache.space_dir(tiny).name == stable_hash(legacy, 16)
    assert space_key(bf16)["precision"] == "bf16"


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_the_flat_block_used_under_autocast_is_the_blocks_own_forward(tiny, tower):
    from tailprompt.backbone.frozen import _flat_block

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 64, generator=g)
    if tower == "text":
        block, causal = tiny.text_blocks[0], True
        expected = block(x, attn_mask=tiny.attn_mask[:9, :9])
    else:
        block, causal = tiny.vision_blocks[0], False
        expected = block(x)
    assert (_flat_block(block, x, causal) - expected).abs().max() <= 1e-5


def test_bf16_image_tower_takes_the_flat_blocks(tiny, images, monkeypatch):
    from tailprompt.backbone import frozen

    calls = []
    for name in ("_flat_block", "_class_token_block"):
        original = getattr(frozen, name)
        monkeypatch.setattr(frozen, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    with torch.no_grad():
        tiny.encode_image(images)
        assert calls == []  # fp32: open_clip's own forward
        with autocast_context("cpu", "bf16"):
            tiny.encode_image(images)
    # the last block computes the pooled class token's row alone
    assert calls == ["_flat_block"] * (tiny.vision_layers - 1) + ["_class_token_block"]


def _stored_dtypes(vlm) -> dict[str, torch.dtype]:
    return {name: p.dtype for name, p in vlm.model.named_parameters()}


@pytest.mark.parametrize("arch", ["tiny-vit", "embedded"])
def test_bf16_stores_only_the_matrix_weights_in_bf16(arch):
    dtypes = _stored_dtypes(load_backbone(arch, precision="bf16"))
    assert dtypes["text_projection"] == torch.bfloat16
    assert dtypes["transformer.resblocks.0.attn.in_proj_weight"] == torch.bfloat16
    assert dtypes["transformer.resblocks.0.mlp.c_fc.bias"] == torch.bfloat16
    assert dtypes["visual.conv1.weight"] == torch.bfloat16
    for kept in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "logit_scale",
                 "transformer.resblocks.0.ln_1.weight"):
        assert dtypes[kept] == torch.float32, kept
    assert set(_stored_dtypes(load_backbone(arch, precision="fp32")).values()) == {torch.float32}


def _prompted_text(vlm, ctx):
    tokens = vlm.tokenize(["X X X X a cat.", "X X X X a small dog."])
    x = vlm.embed_tokens(tokens)
    x = torch.cat([x[:, :1], ctx.unsqueeze(0).expand(2, -1, -1), x[:, 5:]], dim=1)
    return vlm.encode_text_from_embeddings(x, vlm.eot_positions(tokens), shared_prefix=5)


@pytest.mark.filterwarnings("ignore:backbone 'embedded' was pretrained on a closed vocabulary")
@pytest.mark.parametrize("arch", ["tiny-vit", "embedded"])
def test_bf16_stored_weights_give_exactly_the_autocast_numbers(arch, images):
    """Storing the weights cast is a memory/time change only: same features and gradients as autocast over
    the fp32 weights (the path before the weights were stored in bf16)."""
    stored, ref = load_backbone(arch, precision="bf16"), load_backbone(arch, precision="fp32")
    images = torch.randn(2, 3, ref.image_size, ref.image_size, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for name, vlm, context in (("stored", stored, contextlib.nullcontext()),
                               ("ref", ref, autocast_context("cpu", "bf16"))):
        ctx = torch.randn(4, vlm.text_width, generator=torch.Generator().manual_seed(2)).mul(0.02).requires_grad_()
        with context:
            text = _prompted_text(vlm, ctx)
            image = vlm.encode_image(images)
            text.float().square().sum().backward()
            outputs[name] = [text.float(), image.float(), ctx.grad]
            if vlm.has_vit:
                prompts = torch.zeros(2, vlm.vision_width).requires_grad_()
                prompted = vlm.encode_image_with_prompts(images, prompts)
                prompted.float().square().sum().backward()
                outputs[name] += [prompted.float(), prompts.grad]
    for got, want in zip(outputs["stored"], outputs["ref"], strict=True):
        assert torch.equal(got, want)


def test_tower_methods_enter_the_backbone_precision_themselves(images, tokens):
    vlm = load_backbone("tiny-vit", precision="bf16")
    with torch.no_grad():
        outside = vlm.encode_text(tokens), vlm.encode_image(images)
        with vlm.autocast():
            inside = vlm.encode_text(tokens), vlm.encode_image(images)
    for a, b in zip(outside, inside, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_a_graph_is_the_fused_kernel(causal):
    from tailprompt.backbone.frozen import _attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    grads = []
    for fused in (True, False):
        qkv = [t.clone().requires_grad_(not fused) for t in (q, k, v)]
        out = (F.scaled_dot_product_attention(*qkv, is_causal=causal) if fused
               else _attention(*qkv, causal=causal))
        if fused:
            expected = out
        else:
            assert (out - expected).abs().max() <= 1e-6
            out.sum().backward()
            grads = [t.grad for t in qkv]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*ref, is_causal=causal).sum().backward()
    for got, want in zip(grads, (t.grad for t in ref), strict=True):
        assert (got - want).abs().max() <= 1e-5


def test_the_class_token_block_is_the_last_blocks_class_row(tiny):
    from tailprompt.backbone.frozen import _class_token_block, _flat_block

    x = torch.randn(3, 9, 64, generator=torch.Generator().manual_seed(0))
    block = tiny.vision_blocks[-1]
    row = _class_token_block(block, x)
    assert row.shape == (3, 1, 64)
    assert (row[:, 0] - _flat_block(block, x, causal=False)[:, 0]).abs().max() <= 1e-5


def test_the_end_rows_block_is_the_causal_blocks_rows_at_the_ends(tiny):
    from tailprompt.backbone.frozen import _end_rows_block, _flat_block

    x = torch.randn(3, 9, 64, generator=torch.Generator().manual_seed(0))
    ends = torch.tensor([8, 4, 6])
    block = tiny.text_blocks[-1]
    full = _flat_block(block, x, causal=True)[torch.arange(3), ends]
    assert (_end_rows_block(block, x, ends) - full).abs().max() <= 1e-5
    with_graph = _end_rows_block(block, x.clone().requires_grad_(), ends)  # the product-form attention
    assert (with_graph - full).abs().max() <= 1e-5


def test_folding_quick_gelu_into_silu_is_the_same_function():
    """The fold is exact in real arithmetic: on fp32 weights it changes features only by float rounding."""
    from open_clip.transformer import QuickGELU

    from tailprompt.backbone.precision import fold_quick_gelu

    vlm = load_backbone("tiny-vit", quick_gelu=True, precision="fp32")
    assert not vlm.quick_gelu_folded and any(isinstance(m, QuickGELU) for m in vlm.modules())
    images = torch.randn(2, 3, vlm.image_size, vlm.image_size, generator=torch.Generator().manual_seed(3))
    tokens = vlm.tokenize(["a cat.", "a small dog on the grass."])
    before = vlm.image_features(images), vlm.encode_text(tokens)
    assert fold_quick_gelu(vlm.model) == vlm.vision_layers + vlm.text_layers
    assert not any(isinstance(m, QuickGELU) for m in vlm.modules())
    after = vlm.image_features(images), vlm.encode_text(tokens)
    for a, b in zip(after, before):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert fold_quick_gelu(vlm.model) == 0  # nothing left to fold


def test_bf16_folds_quick_gelu_within_bf16_rounding_and_fp32_does_not():
    """Against fp32, the folded bf16 path errs no more than autocast over the unfolded weights does."""
    folded, ref = (load_backbone("tiny-vit", quick_gelu=True, precision=p) for p in ("bf16", "fp32"))
    assert folded.quick_gelu_folded and not ref.quick_gelu_folded
    images = torch.randn(2, 3, ref.image_size, ref.image_size, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for name, vlm, context in (("folded", folded, contextlib.nullcontext()),
                               ("autocast", ref, autocast_context("cpu", "bf16")),
                               ("fp32", ref, contextlib.nullcontext())):
        ctx = torch.randn(4, vlm.text_width, generator=torch.Generator().manual_seed(2)).mul(0.02).requires_grad_()
        with context:
            text = _prompted_text(vlm, ctx)
            prompts = torch.zeros(2, vlm.vision_width).requires_grad_()
            image = vlm.encode_image_with_prompts(images, prompts)
            (text.float().square().sum() + image.float().square().sum()).backward()
        outputs[name] = [text.float().detach(), image.float().detach(), ctx.grad, prompts.grad]
    for got, autocast, exact in zip(outputs["folded"], outputs["autocast"], outputs["fp32"], strict=True):
        assert not torch.equal(got, autocast)  # the folded weights round differently
        scale = exact.abs().max()
        assert (got - exact).abs().max() / scale <= 1.5 * (autocast - exact).abs().max() / scale + 1e-3


def test_folded_bf16_features_get_their_own_cache_space():
    from tailprompt.data.features import space_key

    keys = [space_key(load_backbone("tiny-vit", quick_gelu=qg, precision="bf16")) for qg in (True, False)]
    assert keys[0]["activation"] == "silu-folded" and "activation" not in keys[1]
