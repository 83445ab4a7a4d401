"""Training hooks (epoch-end weight averages and the like), registered by name in `HOOKS` on import."""

from tailprompt.hooks import gpa  # noqa: F401  (registration)
from tailprompt.hooks.base import HOOKS, TrainHook

__all__ = ["HOOKS", "TrainHook"]
