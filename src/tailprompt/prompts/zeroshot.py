"""Zero-shot CLIP: hand-written templates, no trainable parameters.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021);
reference KaiyangZhou/CoOp `trainers/zsclip.py`: `ZeroshotCLIP` encodes the dataset's template
(`CUSTOM_TEMPLATES`) for every class; `ZeroshotCLIP2` averages the normalised features of
`IMAGENET_TEMPLATES_SELECT` plus the dataset's template (not for ImageNet) and renormalises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from tailprompt.data.templates import ENSEMBLE_TEMPLATES
from tailprompt.prompts.common import LearnerError, check_template, template_text_features
from tailprompt.prompts.learner import LEARNERS, PromptLearner

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM

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


class ZeroShot(PromptLearner):
    """Frozen class features from templates; `prompt_state()` is empty."""

    name = "zeroshot"
    config_cls = ZeroshotConfig

    def __init__(self, config: ZeroshotConfig, backbone: FrozenVLM, classnames: list[str], template: str) -> None:
        super().__init__(config, backbone)
        self.templates: list[str] = []
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
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

    def extra_repr(self) -> str:
        return f"templates={len(self.templates)}, classes={len(self.classnames)}"


LEARNERS.register("zeroshot", ZeroShot)

__all__ = ["IMAGENET_TEMPLATES_SELECT", "ZeroShot", "ZeroshotConfig"]
