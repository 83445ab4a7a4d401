"""The training-hook contract: code that runs at fixed points of the training loop, configured by name.

A hook is one file holding its config dataclass and a `TrainHook` subclass, plus one `HOOKS.register`
line. The loop calls `on_train_start` once (also after a resume), `on_epoch_end` after the last step of
every epoch, and `on_train_end` once training is over (it may replace the learner's parameters, e.g.
with an average). `state_dict` / `load_state_dict` carry the hook's state through the resumable
training checkpoint, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from tailprompt.registry import Registry

if TYPE_CHECKING:
    from tailprompt.prompts import PromptLearner


class TrainHook:
    """Base class: every method is a no-op, so a hook overrides what it needs."""

    config_cls: ClassVar[type] = object

    def __init__(self, config: Any) -> None:
        self.config = config

    def on_train_start(self, learner: PromptLearner, n_epochs: int) -> None:
        """Before the first step (or the first step after a resume)."""

    def on_epoch_end(self, learner: PromptLearner, epoch: int) -> None:
        """After the last step of `epoch` (0-based)."""

    def on_train_end(self, learner: PromptLearner) -> None:
        """After the last epoch, before evaluation."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


HOOKS: Registry[type[TrainHook]] = Registry("training hook")
