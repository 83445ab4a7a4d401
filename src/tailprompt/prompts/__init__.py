"""Prompt learners: one file each, registered by name in `LEARNERS`."""

from tailprompt.prompts.base import LEARNERS, LearnerSpec

__all__ = ["LEARNERS", "LearnerSpec"]
