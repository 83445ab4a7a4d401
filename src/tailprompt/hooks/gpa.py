"""Gaussian prompt aggregation (GPA), PromptSRC's weight average over epochs, as a training hook.

Khattak et al., ICCV 2023, Sec. 3.3; reference muzairkhattak/PromptSRC `trainers/promptsrc.py`
(`PromptSRC.build_model`, `forward_backward`, `get_gauss`). With `N` training epochs and
`g(e) = N(e; mean, std)` the Gaussian pdf, the weight of epoch `e = 1 .. N` is `w_e = g(e) / sum_e g(e)`.
After each epoch `e` the prompt state is multiplied by `w_e` and added to the running aggregate
(`((w_1 s_1 + w_2 s_2) + w_3 s_3) + ...`, in the parameters' dtype, as the reference sums its state
dicts); at the end of training the aggregate replaces the prompts. The hook knows nothing about the
learner beyond `prompt_state()` / `load_prompt_state()`, so it averages any learner's prompts.

The weights are computed as `exp(-(e - mean)^2 / (2 std^2))` normalised by its sum, which equals the
reference's `g(e) / sum g` (the pdf's constant cancels) but does not underflow to 0/0 when every
epoch lies far from `mean` (e.g. a 2-epoch smoke run of the few-shot `mean=45, std=5` setting).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tailprompt.hooks.base import HOOKS, TrainHook

if TYPE_CHECKING:
    from tailprompt.prompts import PromptLearner

# Below this total weight of the epochs a cut-short run saw, their aggregate carries no usable prompts.
_MIN_SEEN_WEIGHT = 1e-12


@dataclass
class GPAConfig:
    """PromptSRC's base-to-new setting (`GPA_MEAN 15`, `GPA_STD 1`); cross-dataset 6 / 10, few-shot
    30 / 30 (ImageNet, Caltech, Pets, Food, UCF, SUN) or 45 / 5 (Cars, Flowers, Aircraft, DTD, EuroSAT)."""

    mean: float = 15.0  # epoch (1-based) of the largest weight
    std: float = 1.0  # spread of the weights over epochs, > 0

    def __post_init__(self) -> None:
        if not self.std > 0 or not math.isfinite(self.std):
            raise ValueError(f"std: expected a positive number, got {self.std}")
        if not math.isfinite(self.mean):
            raise ValueError(f"mean: expected a finite number, got {self.mean}")


def gaussian_epoch_weights(n_epochs: int, mean: float, std: float) -> list[float]:
    """`w_e` for epochs `e = 1 .. n_epochs` (float64, summing to 1)."""
    if n_epochs < 1:
        return []
    logs = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, n_epochs + 1)]
    top = max(logs)
    g = [math.exp(v - top) for v in logs]
    total = math.fsum(g)
    return [v / total for v in g]


class GaussianPromptAggregation(TrainHook):
    """Epoch-end weighted sum of the learner's prompt state; replaces the prompts at the end."""

    config_cls = GPAConfig

    def __init__(self, config: GPAConfig) -> None:
        super().__init__(config)
        self.weights: list[float] = []
        self.aggregate: dict[str, Tensor] | None = None
        self.epochs_seen = 0

    def on_train_start(self, learner: PromptLearner, n_epochs: int) -> None:
        self.weights = gaussian_epoch_weights(n_epochs, self.config.mean, self.config.std)

    def on_epoch_end(self, learner: PromptLearner, epoch: int) -> None:
        """Add epoch `epoch + 1`'s weighted prompts (`epoch` is 0-based)."""
        if epoch >= len(self.weights):
            raise ValueError(f"gpa: epoch {epoch} beyond the {len(self.weights)} epochs given at train start")
        weight = self.weights[epoch]
        state = learner.prompt_state()
        weighted = {k: v.detach() * weight for k, v in state.items()}
        if self.aggregate is None:
            self.aggregate = weighted
        else:
            self.aggregate = {k: self.aggregate[k] + weighted[k] for k in weighted}
        self.epochs_seen = epoch + 1

    def on_train_end(self, learner: PromptLearner) -> None:
        """Load the aggregate into the learner.

        A run cut short (`optim.max_steps`) has only seen the first epochs, whose weights need not sum to 1
        (with the base-to-new mean 15, a 2-epoch smoke run would scale the prompts by ~1e-40): the aggregate
        is then divided by the weight the seen epochs carry, or, where that weight is below 1e-12 (nothing
        meaningful was aggregated), the trained prompts stay with a warning. No epoch ended: no change.
        """
        if self.aggregate is None or self.epochs_seen == 0:
            return
        state = {k: v.clone() for k, v in self.aggregate.items()}
        if self.epochs_seen < len(self.weights):
            seen = math.fsum(self.weights[: self.epochs_seen])
            if seen < _MIN_SEEN_WEIGHT:
                warnings.warn(
                    f"gpa: training stopped after {self.epochs_seen} of {len(self.weights)} epochs, which carry "
                    f"a weight of {seen:.1e} (mean {self.config.mean}, std {self.config.std}); keeping the "
                    "trained prompts",
                    stacklevel=2,
                )
                return
            state = {k: v / seen for k, v in state.items()}
        learner.load_prompt_state(state)

    def state_dict(self) -> dict[str, Tensor]:
        state = {"epochs_seen": torch.tensor(self.epochs_seen)}
        for k, v in (self.aggregate or {}).items():
            state[f"aggregate.{k}"] = v.clone()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.epochs_seen = int(state["epochs_seen"])
        prefix = "aggregate."
        aggregate = {k[len(prefix) :]: v.clone() for k, v in state.items() if k.startswith(prefix)}
        self.aggregate = aggregate or None


HOOKS.register("gpa", GaussianPromptAggregation)

__all__ = ["GPAConfig", "GaussianPromptAggregation", "gaussian_epoch_weights"]
