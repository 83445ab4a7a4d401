"""Frozen bf16 matrix weights pre-packed for oneDNN on the CPU (the towers' linear layers, bf16 only).

``F.linear`` on a bf16 CPU tensor hands oneDNN the plain ``[out, in]`` weight, which it re-lays into its
blocked format on every call. For the frozen towers that copy is pure overhead: a text step's 30-row
projections ran 20-30% faster on a weight packed once (`torch.ops.mkldnn._reorder_linear_weight`), the
cache fill's 800-3,000-row ones 5-20% (benchmarks/README.md, "Seventh session"), with outputs equal to
``F.linear``'s. A layer is packed on its first bf16 call; its transpose, which the input gradient
multiplies by, on the first backward through it (a tower that never back-propagates never pays for it).
Products with a graph are packed only when they have few rows (text steps): a MaPLe image batch would
hold both packs of the image tower beside its activations for an 8% faster forward.

A pack is a copy: it remembers the weight's storage and version counter and is rebuilt when the weight was
replaced or written in place (``load_state_dict``, `fold_quick_gelu`). fp32, CUDA, trainable weights and
machines without oneDNN take ``F.linear`` unchanged, so the fp32 parity path stays bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ROWS_HINT = 64  # oneDNN's batch hint for the blocked layout; measured: 30 to 3,152 rows run alike with any
# A product with a graph is packed up to this many rows. Its input gradient multiplies by a packed transpose,
# 15-25% faster at 30-35 rows, ~5% at 160, no faster at 800; a MaPLe image batch (800 rows, 8% faster
# forward) would keep both packs of the image tower beside its activations: +290 MB at the run's peak.
_PACKED_ROWS_WITH_GRAD = 256


class PackedWeight:
    """One frozen ``[out, in]`` weight in oneDNN's layout, and its transpose once a backward needed it."""

    def __init__(self, weight: Tensor) -> None:
        self._key = _identity(weight)
        self.forward = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ROWS_HINT)
        self.weight = weight
        self._transposed: Tensor | None = None

    def matches(self, weight: Tensor) -> bool:
        """Whether this pack still holds `weight`'s current values."""
        return self._key == _identity(weight)

    def transposed(self) -> Tensor:
        """The ``[in, out]`` transpose, packed (what ``grad_out @ W`` multiplies by)."""
        if self._transposed is None:
            t = self.weight.detach().t().contiguous()
            self._transposed = torch.ops.mkldnn._reorder_linear_weight(t, _ROWS_HINT)
        return self._transposed

    # Opaque oneDNN tensors cannot be copied or pickled; a copy packs again on first use.
    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(None), ())


def _identity(weight: Tensor) -> tuple[int, int, torch.dtype, tuple[int, ...]]:
    return (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))


class _PackedLinear(torch.autograd.Function):
    """``x @ W^T + b`` on packed weights; the gradient reaches `x` only (the weights are frozen)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pack: PackedWeight, bias: Tensor | None) -> Tensor:
        ctx.pack = pack
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), pack.forward, bias, "none", [], "")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        pack: PackedWeight = ctx.pack
        grad_x = torch.ops.mkldnn._linear_pointwise(grad.contiguous(), pack.transposed(), None, "none", [], "")
        return grad_x, None, None


def _oneDNN_packs() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _bf16_input(x: Tensor) -> Tensor | None:
    """`x` as the bf16 matrix product would see it here (autocast's cast), or None where it would not be bf16."""
    if x.dtype == torch.bfloat16:
        return x
    cpu_bf16_autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return x.to(torch.bfloat16) if cpu_bf16_autocast and x.dtype == torch.float32 else None


def packed_linear(owner: nn.Module, name: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)``, on a pack kept on `owner` under `name` where that applies.

    It applies to frozen bf16 weights on the CPU with a bf16 product (bf16 `x`, or fp32 `x` under bf16
    autocast, which the product casts as autocast would), without a graph or with one of few rows
    (`_PACKED_ROWS_WITH_GRAD`). Anything else is ``F.linear`` itself.
    """
    xb = _bf16_input(x) if x.device.type == "cpu" and x.dim() >= 2 else None
    graph = torch.is_grad_enabled() and x.requires_grad
    usable = (
        xb is not None
        and (not graph or x.numel() <= _PACKED_ROWS_WITH_GRAD * x.shape[-1])
        and weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and not weight.requires_grad
        and (bias is None or (bias.dtype == torch.bfloat16 and not bias.requires_grad))
        and _oneDNN_packs()
    )
    if not usable:
        return F.linear(x, weight, bias)
    packs: dict[str, PackedWeight] = owner.__dict__.setdefault("_tailprompt_packs", {})
    pack = packs.get(name)
    if pack is None or not pack.matches(weight):
        pack = packs[name] = PackedWeight(weight)
    return _PackedLinear.apply(xb, pack, bias)


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """`layer(x)` through `packed_linear`."""
    return packed_linear(layer, "weight", x, layer.weight, layer.bias)


__all__ = ["PackedWeight", "linear", "packed_linear"]
