"""Shared-prefix text encoding: `[SOS][context]` run once per group equals the plain per-sequence pass."""

from __future__ import annotations

import pytest
import torch

from benchmark_scripts import benchmark_script
from spies import shared_prefix_calls

TOL = 1e-5
NAMES = ["cat", "golden retriever on the grass", "sea or lake", "x"]  # tails of 3, 7, 5 and 3 positions
EQUAL_NAMES = ["cat", "dog", "sea", "car"]  # no tail padded


def _inputs(vlm, n_ctx: int = 4, groups: int | None = None, seed: int = 0, names: list[str] = NAMES):
    """Token embeddings `[K, L, W]` (or `[G, K, L, W]`) whose positions 1..n_ctx hold one shared context."""
    tokens = vlm.tokenize([" ".join(["X"] * n_ctx) + f" {n}." for n in names])
    eot = vlm.eot_positions(tokens)
    base = vlm.embed_tokens(tokens)
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(groups or 1, n_ctx, vlm.text_width, generator=g).requires_grad_(True)
    return base, eot, ctx


def _assemble(base, ctx, n_ctx, grouped):
    k = base.shape[0]
    rows = [torch.cat([base[:, :1], c.unsqueeze(0).expand(k, -1, -1), base[:, 1 + n_ctx :]], 1) for c in ctx]
    return torch.stack(rows) if grouped else rows[0]


def _features_and_grads(vlm, base, eot, ctx, deep, prefix, grouped, n_ctx=4):
    feats = vlm.encode_text_from_embeddings(_assemble(base, ctx, n_ctx, grouped), eot, deep, shared_prefix=prefix)
    unit = feats / feats.norm(dim=-1, keepdim=True)
    # a loss that weights every class and feature dimension differently, on normalised features
    weights = torch.linspace(-1, 1, unit.numel()).reshape(unit.shape)
    grads = torch.autograd.grad((unit * weights).sum(), [ctx, *deep])
    return unit.detach(), grads


@pytest.mark.parametrize("names", [NAMES, EQUAL_NAMES], ids=["ragged_tails", "equal_tails"])
@pytest.mark.parametrize("truncate", [True, False])
def test_shared_prefix_features_and_gradients_equal_the_plain_pass(tiny, monkeypatch, truncate, names):
    base, eot, ctx = _inputs(tiny, names=names)
    assert len(set(eot.tolist())) == (1 if names is EQUAL_NAMES else 3)  # the case the parameter names
    plain, plain_grads = _features_and_grads(tiny, base, eot, ctx, [], 0, grouped=False)
    calls = shared_prefix_calls(monkeypatch)
    shared, shared_grads = _features_and_grads(tiny, base, eot, ctx, [], 5, grouped=False)
    assert calls == [5]
    assert shared.shape == plain.shape == (4, 64)
    assert (shared - plain).abs().max() <= TOL
    assert (shared_grads[0] - plain_grads[0]).abs().max() <= TOL
    assert plain_grads[0].abs().max() > 1e-3  # the context does receive a gradient


def test_deep_prompts_inside_the_prefix_are_shared_exactly(tiny, monkeypatch):
    base, eot, ctx = _inputs(tiny, n_ctx=2)
    g = torch.Generator().manual_seed(1)
    deep = [torch.randn(2, 64, generator=g).requires_grad_(True) for _ in range(2)]  # MaPLe: blocks 1 and 2
    plain, plain_grads = _features_and_grads(tiny, base, eot, ctx, deep, 0, grouped=False, n_ctx=2)
    calls = shared_prefix_calls(monkeypatch)
    shared, shared_grads = _features_and_grads(tiny, base, eot, ctx, deep, 3, grouped=False, n_ctx=2)
    assert calls == [3]
    assert (shared - plain).abs().max() <= TOL
    for a, b in zip(shared_grads, plain_grads):
        assert (a - b).abs().max() <= TOL and b.abs().max() > 1e-4


def test_groups_share_a_prefix_each(tiny, monkeypatch):
    base, eot, ctx = _inputs(tiny, groups=3)
    calls = shared_prefix_calls(monkeypatch)
    shared, shared_grads = _features_and_grads(tiny, base, eot, ctx, [], 5, grouped=True)
    plain, plain_grads = _features_and_grads(tiny, base, eot, ctx, [], 0, grouped=True)
    assert calls == [5] and shared.shape == (3, 4, 64)
    assert (shared - plain).abs().max() <= TOL
    assert (shared_grads[0] - plain_grads[0]).abs().max() <= TOL
    assert (plain[0] - plain[1]).abs().max() > 1e-3  # each group's context counts


@pytest.mark.parametrize("case", ["prefix_past_an_end_of_text", "per_sequence_deep", "deep_past_the_prefix"])
def test_falls_back_to_the_plain_pass_where_the_prefix_is_not_shared(tiny, monkeypatch, case):
    base, eot, ctx = _inputs(tiny)
    x = _assemble(base, ctx, 4, grouped=False).detach()
    deep, prefix = [], 5
    if case == "prefix_past_an_end_of_text":
        prefix = int(eot.min()) + 1
    elif case == "per_sequence_deep":
        deep = [torch.randn(4, 2, 64)]
    else:
        deep, prefix = [torch.randn(5, 64)], 5  # positions 1..5 reach the first class token
    expected = tiny.encode_text_from_embeddings(x, eot, deep)
    calls = shared_prefix_calls(monkeypatch)
    got = tiny.encode_text_from_embeddings(x, eot, deep, shared_prefix=prefix)
    assert calls == []
    assert torch.equal(got, expected)


def test_groups_with_different_end_positions_take_the_plain_pass(tiny, monkeypatch):
    base, eot, ctx = _inputs(tiny, groups=2)
    x = _assemble(base, ctx, 4, grouped=True).detach()
    shifted = torch.cat([eot, eot.flip(0)])  # [G * K]: the second group's classes in another order
    expected = tiny.encode_text_from_embeddings(x.reshape(8, *x.shape[2:]), shifted).reshape(2, 4, -1)
    calls = shared_prefix_calls(monkeypatch)
    got = tiny.encode_text_from_embeddings(x, shifted, shared_prefix=5)
    assert calls == [] and torch.equal(got, expected)
    tiny.encode_text_from_embeddings(x, eot.repeat(2), shared_prefix=5)  # the same positions, repeated
    assert calls == [5]


def test_the_benchmark_text_row_counts_each_tail_up_to_its_end():
    from tailprompt.backbone import load_backbone

    tiny = load_backbone("tiny-vit", precision="fp32")
    full_run = benchmark_script("full_run")
    names = full_run.class_names("imagenet", 6)
    row = full_run.text_tower_row(tiny, k=6, m=4, repeats=1, names_kind="imagenet")
    tokens = tiny.tokenize([" ".join(["X"] * 4) + f" {n}." for n in names])
    eot = tiny.eot_positions(tokens)
    assert row["positions_plain"] == 6 * (int(eot.max()) + 1)
    assert row["positions_shared"] == 5 + int((eot - 4).sum())  # prefix 5; tail k runs positions 5 .. eot_k
    assert row["positions_shared"] < 5 + 6 * (int(eot.max()) + 1 - 5)  # ImageNet's names differ in length
    assert row["max_rel_feature_diff"] <= 1e-5 and row["max_rel_grad_diff"] <= 1e-5


def _prompt_tokens(vlm, names):
    return vlm.tokenize([f"a photo of a {n}." for n in names])


def test_the_packed_plain_pass_equals_the_padded_one_in_fp32():
    """Without a shared prefix each sequence runs only to its own end (bf16 only); in fp32 the same function
    equals the module's own padded forward, features and gradients."""
    from tailprompt.backbone import load_backbone
    from tailprompt.backbone.frozen import _packed_causal_pass, _PackedRows

    vlm = load_backbone("tiny-vit", precision="fp32")
    tokens = _prompt_tokens(vlm, NAMES)
    eot = vlm.eot_positions(tokens)
    length = int(eot.max()) + 1
    results = []
    for packed in (False, True):
        emb = vlm.embed_tokens(tokens)[:, :length].detach().requires_grad_()
        if packed:
            rows = _PackedRows.of(eot, length, emb.device)
            assert rows.slots is not None and len(rows.slots) == int((eot + 1).sum())
            x = emb + vlm.positional_embedding[:length]
            feats = vlm._project_text(vlm.ln_final(_packed_causal_pass(list(vlm.text_blocks), x, rows)))
        else:
            feats = vlm.encode_text_from_embeddings(emb, eot)
        unit = feats / feats.norm(dim=-1, keepdim=True)
        weights = torch.linspace(-1, 1, unit.numel()).reshape(unit.shape)
        (grad,) = torch.autograd.grad((unit * weights).sum(), [emb])
        results.append((unit.detach(), grad))
    (plain, plain_grad), (packed, packed_grad) = results
    assert (packed - plain).abs().max() <= TOL
    assert (packed_grad - plain_grad).abs().max() <= TOL * plain_grad.abs().max()
    real = torch.arange(length) <= eot[:, None]
    assert plain_grad[~real].abs().max() == 0  # positions past an end-of-text token get no gradient


@pytest.mark.parametrize("names", [NAMES, EQUAL_NAMES], ids=["ragged", "equal"])
def test_bf16_text_encoding_packs_only_padded_prompts(monkeypatch, names):
    import tailprompt.backbone.frozen as frozen
    from tailprompt.backbone import load_backbone

    calls = []
    original = frozen._packed_causal_pass
    monkeypatch.setattr(frozen, "_packed_causal_pass", lambda *a: calls.append(1) or original(*a))
    bf16, fp32 = (load_backbone("tiny-vit", precision=p) for p in ("bf16", "fp32"))
    tokens = _prompt_tokens(bf16, names)
    got, exact = bf16.encode_text(tokens), fp32.encode_text(tokens)
    assert calls == ([1] if names is NAMES else [])
    assert (got - exact).abs().max() <= 3e-2 * exact.abs().max()  # bf16's rounding
