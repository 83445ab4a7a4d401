"""CoPrompt: MaPLe's coupled prompts plus two residual feature adapters.

Roy & Etemad, "Consistency-guided Prompt Learning for Vision-Language Models" (ICLR 2024); reference
ShuvenduRoy/CoPrompt `trainers/coprompt.py` (`MultiModalPromptLearner`, `Adapter`, `CustomCLIP`).

- Prompts: exactly MaPLe's (this class is a `MaPLe`), under the reference's `prompt_learner` names.
- Adapters: `Adapter(D, 4)` = `Linear(D, D/4, no bias) -> ReLU -> Linear(D/4, D, no bias) -> ReLU`, one
  for each tower, applied to the *unnormalised* tower outputs and mixed residually,
  `f_img <- 0.1 * A_img(f_img) + 0.9 * f_img`, `f_txt <- 0.2 * A_txt(f_txt) + 0.8 * f_txt`
  (`image_adapter_m`, `text_adapter_m`), then normalised. They train with the prompts (the reference
  trains every parameter whose name holds `prompt_learner` or `adapter`).
- Keys: the reference saves the whole `CustomCLIP`; its prompts are `prompt_learner.*` and its adapters
  the top-level `adapter_image.fc.{0,2}.weight` and `adapter_text.fc.{0,2}.weight`. `prompt_state()`
  holds those same keys, so its files load into the reference model; a reference checkpoint loads once
  its frozen CLIP copies (`image_encoder.`, `text_encoder.`, `logit_scale`, and the distillation teacher
  `model_distill.`) are dropped, and a state with the prompt keys bare loads too.
- Construction order (and so the global-RNG draws) as the reference: MaPLe's prompts, then the image
  adapter, then the text adapter.

The consistency terms (description teacher, second-view image teacher) are the `coprompt` objective;
the reference's per-dataset depth / tokens / weight table is part of the `coprompt` preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from tailprompt.prompts.learner import LEARNERS
from tailprompt.prompts.maple import MaPLe, MaPLeConfig
from tailprompt.tensors import unit

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM

# Whole-model keys outside the prompt learner that are CoPrompt's own trainable parameters.
ADAPTER_PREFIXES = ("adapter_image.", "adapter_text.")
# The frozen second CLIP the reference keeps as a submodule for its teachers.
DISTILL_MODEL_PREFIX = "model_distill."


@dataclass
class CoPromptConfig(MaPLeConfig):
    """CoPrompt defaults (`vit_b16_c2_ep5_batch4_2ctx_randaug.yaml`: MaPLe's 2 tokens, depth 9).

    The reference overrides depth and tokens per dataset (`trainers/constants.py`); the `coprompt`
    preset carries that table.
    """

    image_adapter_ratio: float = 0.1  # the reference's image_adapter_m: weight of the adapted image feature
    text_adapter_ratio: float = 0.2  # text_adapter_m
    adapter_reduction: int = 4  # hidden width = D // adapter_reduction

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("image_adapter_ratio", "text_adapter_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a mixing weight in [0, 1], got {value}")
        if self.adapter_reduction < 1:
            raise ValueError(f"adapter_reduction: expected >= 1, got {self.adapter_reduction}")


class Adapter(nn.Module):
    """The reference's bottleneck `fc`: two bias-free linear layers, each followed by a ReLU."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = dim // reduction
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def residual_adapt(features: Tensor, adapter: nn.Module, ratio: float) -> Tensor:
    """`ratio * adapter(f) + (1 - ratio) * f` on unnormalised features `[N, D]` (fp32)."""
    features = features.float()
    return ratio * adapter(features) + (1 - ratio) * features


class CoPrompt(MaPLe):
    """CoPrompt learner: MaPLe prompts + `adapter_image` / `adapter_text` (trainable).

    Trainable: MaPLe's `ctx`, `proj.*`, `compound_prompts_text.<i>`, `compound_prompt_projections.<i>.*`,
    plus `adapter_image.fc.0.weight` `[D/4, D]`, `adapter_image.fc.2.weight` `[D, D/4]` and the same for
    `adapter_text`.
    """

    name = "coprompt"
    config_cls = CoPromptConfig

    def __init__(self, config: CoPromptConfig, backbone: FrozenVLM, classnames: list[str], template: str) -> None:
        super().__init__(config, backbone, classnames, template)
        dim = backbone.embed_dim
        self.adapter_image = Adapter(dim, config.adapter_reduction).to(backbone.device)
        self.adapter_text = Adapter(dim, config.adapter_reduction).to(backbone.device)
        self.image_adapter_ratio = config.image_adapter_ratio
        self.text_adapter_ratio = config.text_adapter_ratio

    def text_features(self, image_feats: Tensor | None = None) -> Tensor:
        """Normalised adapted class text features `[K, D]`; `image_feats` is ignored."""
        raw = self.unnormalised_text_features()
        return unit(residual_adapt(raw, self.adapter_text, self.text_adapter_ratio))

    def image_features(self, images: Tensor) -> Tensor:
        """Normalised adapted prompted image features `[B, D]` of images `[B, 3, H, W]`."""
        raw = self.unnormalised_image_features(images)
        return unit(residual_adapt(raw, self.adapter_image, self.image_adapter_ratio))

    def prompt_state(self) -> dict[str, Tensor]:
        """The trainable tensors under the reference `CustomCLIP`'s names: `prompt_learner.*` and the
        top-level adapters."""
        return {k if k.startswith(ADAPTER_PREFIXES) else f"prompt_learner.{k}": v
                for k, v in super().prompt_state().items()}

    def load_prompt_state(self, state_dict: Mapping[str, Any]) -> None:
        """Load our `prompt_state`, or a reference `CustomCLIP` state dict (Dassl checkpoint or bare):
        `prompt_learner.*` and the top-level adapters are kept, the frozen CLIP copies dropped."""
        super().load_prompt_state(reference_layout_to_learner_keys(state_dict))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, adapters: image {self.image_adapter_ratio}, text {self.text_adapter_ratio}"
        )


def reference_layout_to_learner_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A reference `CustomCLIP` state dict with the adapters moved under `prompt_learner.`.

    The shared loader then strips that prefix and the frozen CLIP weights, as for MaPLe; the distillation
    teacher's copy (`model_distill.*`) is dropped here. Our own `prompt_state` passes through unchanged.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    if not any(str(k).startswith("prompt_learner.") for k in state_dict):
        return dict(state_dict)
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith(DISTILL_MODEL_PREFIX):
            continue
        out[f"prompt_learner.{key}" if key.startswith(ADAPTER_PREFIXES) else key] = value
    return out


LEARNERS.register("coprompt", CoPrompt)

__all__ = ["Adapter", "CoPrompt", "CoPromptConfig", "reference_layout_to_learner_keys", "residual_adapt"]
