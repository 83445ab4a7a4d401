"""The prompt-learner contract shared by every learner file in this package.

A learner is an `nn.Module` whose only trainable parameters are its prompts. It is built from its
config dataclass, a `FrozenVLM`, the class names of the current label space and the dataset's
zero-shot template. The engine calls, per step:

    image_feats = learner.image_features(images)        # only when learner.uses_image_tower
    text_feats  = learner.text_features(image_feats)    # [K, D] or [B, K, D] (instance-conditioned)

with `image_feats` L2-normalised `[B, D]` (from the feature cache when the image tower is frozen).
`set_classnames` rebuilds the class-name buffers for a new label space (base -> new, cross-dataset)
while keeping the learned parameters, exactly as the reference implementations transfer prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from tailprompt.registry import Registry


@dataclass(frozen=True)
class LearnerSpec:
    """`build(config, backbone, classnames, template) -> nn.Module` plus the learner's config class."""

    config_cls: type
    build: Callable[[Any, Any, list[str], str], nn.Module]
    uses_image_tower: bool = False  # True: images go through a prompted image tower every step (MaPLe)
    instance_conditioned: bool = False  # True: text_features returns [B, K, D] (CoCoOp)


LEARNERS: Registry[LearnerSpec] = Registry("learner")
