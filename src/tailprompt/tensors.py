"""The one L2 normaliser every layer uses."""

from __future__ import annotations

import torch
from torch import Tensor


def unit(x: Tensor) -> Tensor:
    """`x / ||x||` along the last dim, in fp32 at least (fp64 stays fp64); idempotent on unit vectors.

    The norm is clamped at 1e-12 as `F.normalize` does, so a zero row stays zero instead of NaN; for any
    other row the result is bit-identical to the references' plain `x / x.norm(dim=-1, keepdim=True)`.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
