"""Prompt learners, one file each, registered by name in `LEARNERS` on import of this package."""

from tailprompt.prompts import cocoop, coop, dpc, kgcoop, maple, zeroshot  # noqa: F401  (registration)
from tailprompt.prompts.base import LEARNERS, LearnerSpec
from tailprompt.prompts.common import LearnerError, PromptStateError

__all__ = ["LEARNERS", "LearnerError", "LearnerSpec", "PromptStateError"]
