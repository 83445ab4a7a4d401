"""ProGrad: prompt-aligned gradient (Zhu, Niu, Han, Wu, Zhang, ICCV 2023), as its public code computes it.

`BeierZhu/Prompt-align`: `ProGrad.public/trainers/prograd.py` (`ProGradLoss`) and
`Dassl.ProGrad.pytorch/dassl/engine/trainer.py` (`prograd_backward_and_update`). Per step:

* the "general knowledge" term `L_kl = mean_b sum_j -softmax(z_zs / T)_j * log_softmax(z / T)_j * T^2`
  (a cross-entropy to the zero-shot distribution; same gradient as the KL divergence), with `z` the
  prompted logits and `z_zs` the frozen model's zero-shot logits, both scaled by CLIP's logit scale;
* per parameter tensor of the prompt learner, with `G_d` the gradient of the loss that is stepped (the
  reference's cross-entropy; here the weighted total of every configured objective, which is the
  cross-entropy in the `prograd` preset) and `G_g` the gradient of `L_kl`, `g = G_g / ||G_g||`: when
  `<G_d/||G_d||, g> < 0` the gradient becomes `G_d - lambda * <G_d, g> g`, else it stays `G_d`; then one
  optimiser step. `L_kl` itself is never stepped on: its weight in the total is 0, the engine logs it and
  `transform_gradients` uses it.

Defaults `lambda = 1`, `T = 1` (`LOSS.LAMBDA` in the scripts, `LOSS.T` in the configs). The reference
divides by the norms without a guard: a zero gradient gives NaN, the NaN comparison is false and the
gradient is left unchanged; `projected_gradient` does the same on purpose.

TCPT's ProGrad trainer (`ashshaksharifdeen/TCPT:trainers/prograd.py` at 681c6c3) comments the
projection out and steps `xe + kl + margin + 5 * moment` directly; `projection: false` with
`weights: {guide: 1.0}` reproduces that (the `tcpt_prograd` preset).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tailprompt.errors import UserError
from tailprompt.objectives.base import (
    OBJECTIVES,
    GradientTransform,
    Objective,
    ObjectiveContext,
    ObjectiveSpec,
    StepState,
)


class ProGradError(UserError, ValueError):
    """ProGrad cannot run with this learner or setting; the message says what it needs."""


def zero_shot_guide_loss(logits: Tensor, zeroshot_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """`mean_b sum_j -softmax(z_zs/T)_j log_softmax(z/T)_j T^2` for logits `[B, K]` (scalar).

    `zeroshot_logits` is a constant (the frozen teacher runs under `no_grad` in the reference).
    """
    teacher = F.softmax(zeroshot_logits.detach() / temperature, dim=-1)
    per_class = -teacher * F.log_softmax(logits / temperature, dim=-1) * temperature * temperature
    return per_class.sum(1).mean()


def projected_gradient(grad: Tensor, guide_grad: Tensor, strength: float = 1.0) -> Tensor:
    """ProGrad's rule for one parameter tensor: drop the part of `grad` that opposes `guide_grad`.

    `grad - strength * <grad, g> g` with `g = guide_grad / ||guide_grad||` when the two point against
    each other (negative cosine), else `grad` unchanged. Computed in the reference's order of
    operations (both directions normalised before the sign test), so results match it bit for bit.
    """
    guide_dir = guide_grad / torch.linalg.norm(guide_grad)
    grad_dir = grad / torch.linalg.norm(grad)
    if torch.dot(grad_dir.flatten(), guide_dir.flatten()) < 0:
        return grad - strength * torch.dot(grad.flatten(), guide_dir.flatten()) * guide_dir
    return grad


def project_gradients_(params: Sequence[nn.Parameter], guide: Tensor, strength: float = 1.0) -> None:
    """Rewrite every `p.grad` (the stepped loss's gradient) with `projected_gradient` against `guide`.

    `guide` is the undetached guide term; its graph must still exist (the engine retains it). A
    parameter the guide does not reach keeps its gradient, as one whose own gradient is missing.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    guide_grads = torch.autograd.grad(guide, params, retain_graph=True, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, guide_grads):
            if g is not None:
                p.grad = projected_gradient(p.grad, g, strength)


@dataclass
class ProGradConfig:
    """ProGrad's options (`LOSS.LAMBDA`, `LOSS.T`), and whether to project at all."""

    strength: float = 1.0  # lambda: how much of the conflicting component is removed (README: 0.8 on some datasets)
    temperature: float = 1.0  # T of the zero-shot distillation term
    projection: bool = True  # false: no gradient surgery (then give `guide` a weight to distil instead)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")


def guide_terms(cfg: ProGradConfig) -> Callable[[StepState], dict[str, Tensor]]:
    """The term function: `guide` = the zero-shot distillation term (weight 0 by default)."""

    def terms(state: StepState) -> dict[str, Tensor]:
        zs = state.zeroshot_logits
        if zs is None or zs.shape != state.logits.shape:
            got = "none" if zs is None else f"shape {list(zs.shape)}"
            raise ProGradError(
                f"objective prograd: needs zero-shot logits over the same images and classes as the learner's "
                f"logits {list(state.logits.shape)} (frozen image features against the dataset template), got "
                f"{got}; this learner/setting has none to distil from"
            )
        return {"guide": zero_shot_guide_loss(state.logits, state.zeroshot_logits, cfg.temperature)}

    return terms


def gradient_transform(cfg: ProGradConfig) -> GradientTransform | None:
    """`transform_gradients(params, terms)`: the projection against the raw `guide` term, or None."""
    if not cfg.projection:
        return None

    def transform(params: Sequence[nn.Parameter], terms: dict[str, Tensor]) -> None:
        project_gradients_(params, terms["guide"], cfg.strength)

    return transform


def build_prograd(cfg: ProGradConfig, context: ObjectiveContext) -> Objective:
    return Objective(guide_terms(cfg), gradient_transform(cfg))


OBJECTIVES.register("prograd", ObjectiveSpec(
    ProGradConfig, build_prograd, default_weights={"guide": 0.0}, reads=frozenset({"zeroshot_logits"})))
