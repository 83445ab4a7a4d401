"""Pre-packed bf16 linear weights (backbone/packed.py): F.linear's numbers, rebuilt when the weight changes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tailprompt.backbone import packed
from tailprompt.backbone.packed import linear, packed_linear

BF16_ULP = 2.0**-7  # relative spacing of bf16 numbers: two roundings of one product differ by at most this

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not in this torch")


def frozen_layer(out_features: int = 48, in_features: int = 32, dtype: torch.dtype = torch.bfloat16) -> nn.Linear:
    layer = nn.Linear(in_features, out_features).to(dtype)
    layer.requires_grad_(False)
    return layer


def packs_of(layer: nn.Module) -> dict:
    return layer.__dict__.get("_tailprompt_packs", {})


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a.float() - b.float()).abs() <= BF16_ULP * b.float().abs().clamp_min(1e-3)).all())


@pytest.mark.parametrize("shape", [(5, 32), (2, 7, 32), (3, 1, 4, 32)])
def test_forward_and_input_gradient_equal_f_linear_under_bf16_autocast(shape):
    torch.manual_seed(0)
    layer = frozen_layer()
    x = torch.randn(*shape, requires_grad=True)
    grad_out = torch.randn(*shape[:-1], 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear(layer, x)
        want = F.linear(x, layer.weight, layer.bias)
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    assert close(got, want)
    (g_got,) = torch.autograd.grad(got, x, grad_out)
    (g_want,) = torch.autograd.grad(want, x, grad_out)
    assert g_got.dtype == g_want.dtype == torch.float32 and close(g_got, g_want)
    assert set(packs_of(layer)) == {"weight"}


def test_a_forward_without_gradient_packs_no_transpose():
    layer = frozen_layer()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        linear(layer, torch.randn(4, 32))
    assert packs_of(layer)["weight"]._transposed is None


@pytest.mark.parametrize("case", ["fp32 weight", "trainable weight", "no autocast, fp32 input"])
def test_anything_but_a_frozen_bf16_product_is_f_linear_itself(case):
    torch.manual_seed(0)
    layer = frozen_layer(dtype=torch.float32 if case == "fp32 weight" else torch.bfloat16)
    x = torch.randn(4, 32)
    if case == "trainable weight":
        layer.weight.requires_grad_(True)
    if case == "no autocast, fp32 input":
        with pytest.raises(RuntimeError):  # F.linear's own dtype error, not a silent cast
            linear(layer, x)
        assert not packs_of(layer)
        return
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear(layer, x)
        want = F.linear(x, layer.weight, layer.bias)
    assert torch.equal(got, want) and not packs_of(layer)
    if case == "trainable weight":
        got.float().sum().backward()
        assert layer.weight.grad is not None


def test_a_weight_written_in_place_or_replaced_is_packed_again():
    torch.manual_seed(0)
    layer = frozen_layer()
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    before = linear(layer, x)
    with torch.no_grad():
        layer.weight.mul_(2)  # as fold_quick_gelu or load_state_dict write
    assert close(linear(layer, x), F.linear(x, layer.weight, layer.bias))
    layer.weight = nn.Parameter(torch.randn(48, 32, dtype=torch.bfloat16), requires_grad=False)
    after = linear(layer, x)
    assert close(after, F.linear(x, layer.weight, layer.bias)) and not close(after, before)


def test_sliced_weights_keep_one_pack_per_name():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 2).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = packed_linear(attn, "q", x, w[:16], b[:16])
    kv = packed_linear(attn, "kv", x, w[16:], b[16:])
    assert close(q, F.linear(x, w[:16], b[:16])) and close(kv, F.linear(x, w[16:], b[16:]))
    assert set(packs_of(attn)) == {"q", "kv"}


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_module_packs_again_and_computes_the_same(how):
    torch.manual_seed(0)
    layer = frozen_layer()
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    want = linear(layer, x)
    clone = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert torch.equal(linear(clone, x), want)


def test_without_onednn_the_product_is_f_linear(monkeypatch):
    monkeypatch.setattr(packed, "_oneDNN_packs", lambda: False)
    layer = frozen_layer()
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    assert torch.equal(linear(layer, x), F.linear(x, layer.weight, layer.bias)) and not packs_of(layer)


def test_products_with_a_graph_are_packed_only_when_they_have_few_rows():
    layer = frozen_layer()
    many = torch.randn(packed._PACKED_ROWS_WITH_GRAD + 1, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear(layer, many)
        assert not packs_of(layer)  # an image batch with a graph: the plain weight, no pack beside activations
        with torch.no_grad():
            linear(layer, many)
        assert set(packs_of(layer)) == {"weight"}
