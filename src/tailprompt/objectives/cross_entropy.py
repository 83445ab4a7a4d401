"""Cross-entropy on the scaled logits: the CLIP prompt-tuning loss of every reference learner.

`L_CE = -mean_i log softmax(z_i)_{y_i}` with `z = logit_scale * cos(image, text)` (CoOp's
`F.cross_entropy(output, label)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState


@dataclass
class CrossEntropyConfig:
    label_smoothing: float = 0.0  # 0 = the references' plain cross-entropy

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {self.label_smoothing}")


def cross_entropy_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of `logits [B, K]` (already scaled by logit_scale) against `labels [B]`."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def build_cross_entropy(cfg: CrossEntropyConfig, context: ObjectiveContext):
    def terms(state: StepState) -> dict[str, Tensor]:
        return {"ce": cross_entropy_loss(state.logits, state.labels, cfg.label_smoothing)}

    return terms


OBJECTIVES.register(
    "cross_entropy", ObjectiveSpec(CrossEntropyConfig, build_cross_entropy, default_weights={"ce": 1.0})
)
