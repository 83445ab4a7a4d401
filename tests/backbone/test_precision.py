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
    assert vlm.precision == "bf16" and vlm.dtype == torch.float32  # weights stay fp32
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
    original = frozen._flat_block
    monkeypatch.setattr(frozen, "_flat_block", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        tiny.encode_image(images)
        assert calls == []  # fp32: open_clip's own forward
        with autocast_context("cpu", "bf16"):
            tiny.encode_image(images)
    assert len(calls) == tiny.vision_layers
