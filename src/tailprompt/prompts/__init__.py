"""Prompt learners, one file each, registered by name in `LEARNERS` on import of this package."""

from tailprompt.prompts import (  # noqa: F401  (registration)
    cocoop,
    coop,
    coprompt,
    dpc,
    kgcoop,
    maple,
    prograd,
    promptsrc,
    zeroshot,
)
from tailprompt.prompts.common import LearnerError, PromptStateError
from tailprompt.prompts.learner import LEARNERS, PromptLearner, build_learner

__all__ = ["LEARNERS", "LearnerError", "PromptLearner", "PromptStateError", "build_learner"]
