"""Precision policy of the frozen towers (design §8): bf16 autocast where the hardware multiplies bf16 natively.

Only the towers' matrix products run in bf16 (under `torch.autocast`); prompt parameters, optimiser state,
objectives, metrics and the cached features stay fp32. `fp32` is the reference path that parity tests use.
In bf16 the frozen matrix weights are stored in bf16 (`store_matmul_weights`), which gives autocast's numbers
without its per-call weight copies.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Precision = Literal["auto", "fp32", "bf16"]
ResolvedPrecision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

# CPU flags (Linux /proc/cpuinfo) of native bf16 matrix units: AMX tiles and AVX512-BF16 dot products.
# Without them oneDNN emulates bf16 through fp32 and autocast only adds casts.
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Feature flags of the first CPU in `cpuinfo`; empty where the file does not exist (not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this machine's CPU multiplies bf16 natively (read once per process: the CPU does not change)."""
    return any(flag in cpu_flags() for flag in _NATIVE_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device | str) -> ResolvedPrecision:
    """`auto` -> bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere; `fp32`/`bf16` as given.

    Raises:
        ValueError: `precision` is not one of auto, fp32, bf16 (names the field).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"backbone.precision: expected one of auto, fp32, bf16, got {precision!r}")
    if precision != "auto":
        return precision  # type: ignore[return-value]
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def autocast_context(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The context the towers run under: bf16 autocast on `device`, or nothing for fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def store_matmul_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Store in `dtype` the frozen weights that autocast would cast to it on every call.

    Linear and convolution weights and biases, attention in-projections and the towers' projection
    matrices: autocast feeds exactly these to its low-precision kernels, so storing them cast gives the same
    numbers. Norms, embeddings, class tokens and the logit scale are not autocast inputs and stay fp32.
    """
    def cast(owner: nn.Module, name: str) -> None:
        p = getattr(owner, name, None)
        if isinstance(p, nn.Parameter):
            p.data = p.data.to(dtype)

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            names: tuple[str, ...] = ("weight", "bias")
        elif isinstance(module, nn.MultiheadAttention):
            names = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        else:
            continue
        for name in names:
            cast(module, name)
    text = model.text if hasattr(model, "text") else model
    cast(text, "text_projection")
    cast(model.visual, "proj")


QUICK_GELU_SLOPE = 1.702  # OpenAI CLIP's activation: QuickGELU(h) = h * sigmoid(1.702 h)


def fold_quick_gelu(model: nn.Module) -> int:
    """Rewrite every ``c_fc -> QuickGELU -> c_proj`` MLP as ``c_fc' -> SiLU -> c_proj'``; how many were.

    QuickGELU(h) = SiLU(1.702 h) / 1.702, so c_fc's weight and bias scaled by 1.702 and c_proj's weight by
    1 / 1.702 give the same function with one fused activation kernel forward and one backward, where
    QuickGELU takes three elementwise passes forward and five backward over the widest activations of every
    block (a MaPLe step on ViT-B/16 spent ~85 ms of ~1 s in them). Done for bf16 only, where the scaled
    weights' rounding stays within bf16's own (~2^-9 relative); fp32 keeps the original weights and modules,
    bit for bit. The folded weights are the backbone's parameters from then on.
    """
    from open_clip.transformer import QuickGELU

    folded = 0
    for module in model.modules():
        fc, act, proj = (getattr(module, n, None) for n in ("c_fc", "gelu", "c_proj"))
        if not (isinstance(act, QuickGELU) and isinstance(fc, nn.Linear) and isinstance(proj, nn.Linear)):
            continue
        # In place: a bf16 tensor times a Python scalar is computed in fp32 and rounded once, as the fp32
        # copy would be, without materialising the copy (0.69 s -> 0.05 s on ViT-B/16).
        with torch.no_grad():
            fc.weight.mul_(QUICK_GELU_SLOPE)
            if fc.bias is not None:
                fc.bias.mul_(QUICK_GELU_SLOPE)
            proj.weight.div_(QUICK_GELU_SLOPE)
        module.gelu = nn.SiLU()
        folded += 1
    return folded


__all__ = [
    "PRECISIONS",
    "QUICK_GELU_SLOPE",
    "Precision",
    "ResolvedPrecision",
    "autocast_context",
    "cpu_flags",
    "cpu_has_native_bf16",
    "fold_quick_gelu",
    "resolve_precision",
    "store_matmul_weights",
]
