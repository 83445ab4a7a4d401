"""Training objectives (terms) that plug into any learner through `StepState`."""

from tailprompt.objectives.base import OBJECTIVES, ObjectiveSpec, StepState, per_image_mean

__all__ = ["OBJECTIVES", "ObjectiveSpec", "StepState", "per_image_mean"]
