"""The non-finite guard of the training loop: stop at the first NaN / inf, name the step and the term.

`watch` runs every step on the device (no host sync: it keeps the first bad step per name as a device
scalar); `check` syncs once, at the end of an epoch, before the checkpoint is saved, and raises a
`NonFiniteError` naming where it started. The run then writes no result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tailprompt.errors import UserError


class NonFiniteError(UserError):
    """Training produced NaN or inf; the message names the step, the epoch and the term."""


@dataclass
class FiniteGuard:
    first_bad: dict[str, Tensor] = field(default_factory=dict)  # name -> int64 step, -1 while finite
    epochs_at: dict[int, int] = field(default_factory=dict)  # first step of each epoch (for the message)

    def watch(self, step: int, epoch: int, tensors: Mapping[str, Tensor]) -> None:
        """Record, per name, the first `step` at which its tensor holds a non-finite value."""
        self.epochs_at.setdefault(epoch, step)
        for name, t in tensors.items():
            bad = ~torch.isfinite(t.detach()).all()
            prev = self.first_bad.get(name)
            if prev is None:
                prev = torch.full((), -1, dtype=torch.long, device=t.device)
            self.first_bad[name] = torch.where(bad & (prev < 0), torch.full_like(prev, step), prev)

    def check(self) -> None:
        """Raise `NonFiniteError` if any watched tensor was ever non-finite (one host sync)."""
        if not self.first_bad:
            return
        names = list(self.first_bad)
        steps = torch.stack([self.first_bad[n].cpu() for n in names]).tolist()
        bad = [(s, n) for s, n in zip(steps, names) if s >= 0]
        if not bad:
            return
        step = min(s for s, _ in bad)
        culprits = [n for s, n in bad if s == step]  # in watch order: features before the terms they feed
        epoch = max(e for e, first in self.epochs_at.items() if first <= step)
        raise NonFiniteError(
            f"training stopped: non-finite value (NaN or inf) at step {step} (epoch {epoch}) in "
            f"{', '.join(culprits)}; no result written. Lower optim.lr, or check the backbone weights "
            f"and the objective weights"
        )


def require_finite(tensor: Tensor, what: str) -> Tensor:
    """`tensor` unchanged, or a `NonFiniteError` naming `what` (e.g. the backbone's frozen features, before
    a library such as scikit-learn's K-means meets them with its own message)."""
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"{what} hold NaN or inf before training; check backbone.weights "
                             f"(no result written)")
    return tensor
