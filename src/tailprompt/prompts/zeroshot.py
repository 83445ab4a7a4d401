"""Zero-shot CLIP: hand-written templates, no trainable parameters.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021);
reference KaiyangZhou/CoOp `trainers/zsclip.py`: `ZeroshotCLIP` encodes the dataset's template
(`CUSTOM_TEMPLATES`) for every class; `ZeroshotCLIP2` averages the normalised features of
`IMAGENET_TEMPLATES_SELECT` plus the dataset's template (not for ImageNet) and renormalises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tailprompt.data.readers import ENSEMBLE_TEMPLATES
from tailprompt.prompts.base import LEARNERS, LearnerSpec
from tailprompt.prompts.common import (
    LearnerError,
    PromptModule,
    check_template,
    clean_classnames,
    frozen_image_features,
    load_prompt_state_into,
    normalized,
)

# CoOp `trainers/imagenet_templates.py` IMAGENET_TEMPLATES_SELECT (ZeroshotCLIP2's ensemble); one copy,
# kept with the dataset templates.
IMAGENET_TEMPLATES_SELECT = ENSEMBLE_TEMPLATES


@dataclass
class ZeroshotConfig:
    """Zero-shot classifier: the dataset's template, or an ensemble of templates (ZeroshotCLIP2)."""

    ensemble: bool = False  # average normalised features over `templates` (+ the dataset's template)
    templates: list[str] = field(default_factory=lambda: list(IMAGENET_TEMPLATES_SELECT))
    # ZeroshotCLIP2 adds the dataset's own template to the ensemble except for ImageNet: set false there.
    add_dataset_template: bool = True

    def __post_init__(self) -> None:
        for i, t in enumerate(self.templates):
            check_template(t, f"templates[{i}]")
        if self.ensemble and not self.templates and not self.add_dataset_template:
            raise ValueError("ensemble=true needs templates or add_dataset_template=true")


def template_text_features(backbone: Any, classnames: list[str], templates: list[str]) -> Tensor:
    """Mean of the normalised `encode_text(template.format(name))` over templates, renormalised -> `[K, D]`.

    With one template this is the plain normalised feature (ZeroshotCLIP).
    """
    names = clean_classnames(classnames)
    with torch.no_grad():
        per_template = []
        for template in templates:
            tokens = backbone.tokenize([template.format(n) for n in names]).to(backbone.device)
            per_template.append(normalized(backbone.encode_text(tokens)))
        if len(per_template) == 1:
            return per_template[0]
        total = per_template[0]
        for feats in per_template[1:]:  # sequential sum, in the reference's order
            total = total + feats
        return normalized(total / len(per_template))


class ZeroShot(PromptModule):
    """Frozen class features from templates; `prompt_state()` is empty."""

    def __init__(self, backbone: Any, classnames: list[str], template: str, config: ZeroshotConfig) -> None:
        super().__init__(backbone)
        self.config = config
        self.classnames: list[str] = []
        self.templates: list[str] = []
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str) -> None:
        """Encode the class features of a new label space with that dataset's `template`."""
        if not classnames:
            raise LearnerError("zeroshot: needs at least one class name")
        if self.config.ensemble:
            templates = list(self.config.templates)
            if self.config.add_dataset_template and template not in templates:
                templates.append(check_template(template, "zeroshot"))
        else:
            templates = [check_template(template, "zeroshot")]
        feats = template_text_features(self.backbone, classnames, templates)
        self.register_buffer("class_features", feats.float(), persistent=False)
        self.templates = templates
        self.classnames = list(classnames)

    def text_features(self, image_feats: Tensor | None = None) -> Tensor:
        """Normalised class features `[K, D]` (computed once per label space)."""
        return self.class_features

    def image_features(self, images: Tensor) -> Tensor:
        """Normalised frozen image features `[B, D]`."""
        return frozen_image_features(self.backbone, images)

    def load_prompt_state(self, state_dict: dict[str, Tensor]) -> None:
        """Accepts only an empty state (after dropping reference class-name buffers)."""
        load_prompt_state_into(self, state_dict, "zeroshot")

    def extra_repr(self) -> str:
        return f"templates={len(self.templates)}, classes={len(self.classnames)}"


def build_zeroshot(config: ZeroshotConfig, backbone: Any, classnames: list[str], template: str) -> ZeroShot:
    """`LearnerSpec.build` for `zeroshot`."""
    return ZeroShot(backbone, classnames, template, config)


LEARNERS.register("zeroshot", LearnerSpec(ZeroshotConfig, build_zeroshot))

__all__ = [
    "IMAGENET_TEMPLATES_SELECT",
    "ZeroShot",
    "ZeroshotConfig",
    "build_zeroshot",
    "template_text_features",
]
