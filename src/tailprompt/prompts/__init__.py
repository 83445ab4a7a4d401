"""Prompt learners, one file each, registered by name in `LEARNERS` on import of this package."""

from tailprompt.prompts import cocoop, coop, kgcoop, maple, zeroshot  # noqa: F401  (registration)
from tailprompt.prompts.common import LearnerError, PromptStateError
from tailprompt.prompts.learner import LEARNERS, PromptLearner, build_learner

__all__ = ["LEARNERS", "LearnerError", "PromptLearner", "PromptStateError", "build_learner"]
