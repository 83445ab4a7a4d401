"""PromptSRC's learner: independent vision-language deep prompts (IVLP).

Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting"
(ICCV 2023); reference muzairkhattak/PromptSRC `trainers/promptsrc.py` (`VLPromptLearner`) and
`clip/model.py` (`VisionTransformer`, `ResidualAttentionBlock_IVLP`). Unlike MaPLe the two towers'
prompts are not coupled: each tower has its own learnable tokens.

- Text: `[SOS][ctx (n_ctx_text tokens)][rest of the init text][name][.][EOS]`; with the default
  `n_ctx_text=4, ctx_init="a photo of a"` the four vectors start as the embeddings of those words.
  In text blocks `1 .. depth_text-1` the hidden states at positions `1 .. n_ctx_text` are replaced
  by `deep_text_prompts.<i-1>` (N(0, 0.02)).
- Vision: `VPT` (`n_ctx_vision` tokens, N(0, 0.02)) is appended after CLS + patch tokens (after the
  positional embedding, before `ln_pre`); in vision blocks `1 .. depth_vision-1` the last
  `n_ctx_vision` tokens are replaced by `deep_vision_prompts.<i-1>`. `depth_vision=0` leaves the
  image tower unprompted (the reference's VPT switch).

The reference keeps the deep prompts inside the CLIP blocks, so its checkpoints name them
`image_encoder.VPT`, `image_encoder.transformer.resblocks.<b>.VPT_shallow` and
`text_encoder.transformer.resblocks.<b>.VPT_shallow` next to `prompt_learner.ctx`;
`load_prompt_state` maps those keys (`reference_key_map`) and drops the frozen weights, the class-name
buffers and the frozen zero-shot image encoder (`prompt_learner.ZS_image_encoder.*`) saved with them.

Precision: the reference casts `VPT` and every deep prompt with `.half()` before joining them to
the activations, even in fp32 runs (the layer-0 text context is not cast). `round_prompts_fp16`
reproduces that rounding so reference outputs can be matched; the default keeps plain fp32.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from tailprompt.prompts.common import (
    LearnerError,
    assemble_prompts,
    backbone_dtype,
    class_prompts,
    encode_prompt_embeddings,
    install_class_prompts,
    load_prompt_state_into,
    random_context,
    shared_context_prefix,
    word_context,
)
from tailprompt.prompts.learner import LEARNERS, PromptLearner
from tailprompt.tensors import unit

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM

# The reference initialises from ctx_init only when n_ctx <= 4 (`if ctx_init and n_ctx <= 4`).
_MAX_WORD_INIT_CTX = 4
# The frozen zero-shot image encoder the reference keeps inside its prompt learner (never trained).
_REFERENCE_ZS_ENCODER = "ZS_image_encoder."


@dataclass
class PromptSRCConfig:
    """IVLP defaults of PromptSRC (`vit_b16_c2_ep20_batch4_4+4ctx`); cross-dataset uses depth 3/3."""

    n_ctx_text: int = 4  # text prompt tokens per layer (N_CTX_TEXT)
    n_ctx_vision: int = 4  # vision prompt tokens per layer (N_CTX_VISION)
    ctx_init: str = "a photo of a"  # first n_ctx_text tokens initialise ctx ("" = random N(0, 0.02))
    prompt_depth_text: int = 9  # layers 0 .. depth-1 carry text prompts (>= 1); clamped to the tower
    prompt_depth_vision: int = 9  # layers 0 .. depth-1 carry vision prompts (0 = none); clamped
    round_prompts_fp16: bool = False  # round VPT and deep prompts to fp16 on the way in, as the reference

    def __post_init__(self) -> None:
        if self.n_ctx_text < 1:
            raise ValueError(f"n_ctx_text: expected >= 1, got {self.n_ctx_text}")
        if self.n_ctx_vision < 1:
            raise ValueError(f"n_ctx_vision: expected >= 1, got {self.n_ctx_vision}")
        if self.prompt_depth_text < 1:
            raise ValueError(
                f"prompt_depth_text: expected >= 1 (the reference needs text prompts), got {self.prompt_depth_text}"
            )
        if self.prompt_depth_vision < 0:
            raise ValueError(
                f"prompt_depth_vision: expected >= 0 (0 = no vision prompts), got {self.prompt_depth_vision}"
            )


def clamped_depth(depth: int, layers: int | None, field: str) -> int:
    """`depth` cut to the tower's `layers` blocks with a warning (deeper prompts would never train)."""
    if layers is None or depth <= layers:
        return depth
    warnings.warn(
        f"promptsrc: {field}={depth} exceeds the backbone's {layers} transformer blocks; using {layers}",
        stacklevel=3,
    )
    return layers


def reference_key_map(depth_text: int, depth_vision: int) -> dict[str, str]:
    """Reference `CustomCLIP` key -> learner key for every prompt this learner has."""
    mapping = {"prompt_learner.ctx": "ctx"}
    if depth_vision >= 1:
        mapping["image_encoder.VPT"] = "VPT"
    for b in range(1, depth_vision):
        mapping[f"image_encoder.transformer.resblocks.{b}.VPT_shallow"] = f"deep_vision_prompts.{b - 1}"
    for b in range(1, depth_text):
        mapping[f"text_encoder.transformer.resblocks.{b}.VPT_shallow"] = f"deep_text_prompts.{b - 1}"
    return mapping


_REFERENCE_PROMPT_KEY = re.compile(r"\.(VPT|VPT_shallow)$")
_REFERENCE_PREFIXES = ("prompt_learner.", "image_encoder.", "text_encoder.")


def own_prompt_state(state: Mapping[str, Any], depth_text: int, depth_vision: int) -> dict[str, Any]:
    """A reference checkpoint renamed to the learner's keys; a state already in them passes through.

    Accepts `CustomCLIP.state_dict()`, the Dassl checkpoint around it, or only its trainable
    parameters. Dropped: the frozen CLIP weights (`image_encoder.*`, `text_encoder.*`,
    `logit_scale`) and the frozen zero-shot encoder (`prompt_learner.ZS_image_encoder.*`); the class-name
    buffers are dropped later by the common loader. A reference prompt the learner has no slot for (a
    deeper checkpoint) keeps its reference name, so the strict load reports it as unexpected.
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not any(k.startswith(_REFERENCE_PREFIXES) for k in state):
        return dict(state)
    mapping = reference_key_map(depth_text, depth_vision)
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key in mapping:
            out[mapping[key]] = value
        elif key.startswith("prompt_learner."):
            rest = key[len("prompt_learner.") :]
            if not rest.startswith(_REFERENCE_ZS_ENCODER):
                out[rest] = value
        elif key.startswith(("image_encoder.", "text_encoder.")):
            if _REFERENCE_PROMPT_KEY.search(key):
                out[key] = value
        elif key != "logit_scale":
            out[key] = value
    return out


class PromptSRC(PromptLearner):
    """IVLP prompt learner of PromptSRC.

    Trainable: `ctx` `[n_t, W]`, `VPT` `[n_v, Wv]` (when `depth_vision >= 1`),
    `deep_text_prompts.<i>` `[n_t, W]` for text block `i + 1`, `deep_vision_prompts.<i>` `[n_v, Wv]`
    for vision block `i + 1`.
    """

    name = "promptsrc"
    config_cls = PromptSRCConfig
    uses_image_tower = True

    def __init__(self, config: PromptSRCConfig, backbone: FrozenVLM, classnames: list[str], template: str) -> None:
        super().__init__(config, backbone)
        if config.prompt_depth_vision >= 1 and (
            not getattr(backbone, "has_vit", False) or backbone.vision_width is None
        ):
            raise LearnerError(
                f"promptsrc prompts the image transformer, but backbone {getattr(backbone, 'arch', '?')!r} "
                "has a convolutional image tower (has_vit=False); use a ViT backbone (e.g. "
                "backbone.name=embedded-vit or ViT-B-16) or learner.prompt_depth_vision=0"
            )
        self.depth_text = clamped_depth(config.prompt_depth_text, backbone.text_layers, "prompt_depth_text")
        self.depth_vision = clamped_depth(
            config.prompt_depth_vision, getattr(backbone, "vision_layers", None), "prompt_depth_vision"
        )
        self.n_ctx = n_ctx = config.n_ctx_text
        width = backbone.text_width
        # Global-RNG draws in the reference's relative order: VPT, vision blocks, text blocks (all built with
        # CLIP), then a random ctx in the prompt learner.
        if self.depth_vision >= 1:
            self.VPT = nn.Parameter(random_context((config.n_ctx_vision, backbone.vision_width), None))
        self.deep_vision_prompts = nn.ParameterList(
            [
                nn.Parameter(random_context((config.n_ctx_vision, backbone.vision_width), None))
                for _ in range(max(self.depth_vision - 1, 0))
            ]
        )
        self.deep_text_prompts = nn.ParameterList(
            [nn.Parameter(random_context((n_ctx, width), None)) for _ in range(self.depth_text - 1)]
        )
        if config.ctx_init and n_ctx <= _MAX_WORD_INIT_CTX:
            self.prompt_prefix = config.ctx_init.replace("_", " ")
            ctx = word_context(backbone, self.prompt_prefix, n_ctx)
        else:
            self.prompt_prefix = " ".join(["X"] * n_ctx)
            ctx = random_context((n_ctx, width), None)
        self.ctx = nn.Parameter(ctx)
        self.to(backbone.device)
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
        """Rebuild the class-name buffers for a new label space; every prompt parameter is kept."""
        install_class_prompts(self, class_prompts(self.backbone, classnames, self.prompt_prefix, self.n_ctx))
        self.classnames = list(classnames)

    def _entering(self, prompt: Tensor) -> Tensor:
        """A prompt as it joins the activations: optionally rounded to fp16 (reference quirk)."""
        return prompt.half().to(prompt.dtype) if self.config.round_prompts_fp16 else prompt

    def prompt_embeddings(self) -> Tensor:
        """Layer-0 text prompts `[K, L, W]`: `[SOS][ctx][suffix]` (ctx is never rounded)."""
        return assemble_prompts(self.token_prefix, self.ctx, self.token_suffix)

    def text_features(self, image_feats: Tensor | None = None) -> Tensor:
        """Normalised class text features `[K, D]`; `image_feats` is ignored."""
        deep = [self._entering(p) for p in self.deep_text_prompts]
        prompts, prefix = self.prompt_embeddings(), shared_context_prefix(self.n_ctx)
        return encode_prompt_embeddings(self.backbone, prompts, self.eot, deep or None, shared_prefix=prefix)

    def image_features(self, images: Tensor) -> Tensor:
        """Normalised prompted image features `[B, D]` of images `[B, 3, H, W]`."""
        dtype = backbone_dtype(self.backbone)
        if self.depth_vision == 0:
            return self.backbone.image_features(images)
        shallow = self._entering(self.VPT).to(dtype)
        deep = [self._entering(p).to(dtype) for p in self.deep_vision_prompts]
        return unit(self.backbone.encode_image_with_prompts(images.to(dtype), shallow, deep or None))

    def prompt_state(self) -> dict[str, Tensor]:
        """The trainable prompts under the reference's `CustomCLIP` names (`prompt_learner.ctx`,
        `image_encoder.VPT`, `{image,text}_encoder.transformer.resblocks.<b>.VPT_shallow`), the keys its
        checkpoints hold, so files written from this state load into the reference model."""
        reference = {own: ref for ref, own in reference_key_map(self.depth_text, self.depth_vision).items()}
        return {reference.get(k, k): v for k, v in super().prompt_state().items()}

    def load_prompt_state(self, state_dict: Mapping[str, Any]) -> None:
        """Load our `prompt_state`, or a reference checkpoint (`CustomCLIP.state_dict()`, a Dassl
        checkpoint around it, or its trainable parameters only): reference names are mapped."""
        state = own_prompt_state(state_dict, self.depth_text, self.depth_vision)
        load_prompt_state_into(self, state, self.name, self.ignored_reference_keys)

    def extra_repr(self) -> str:
        return (
            f"n_ctx_text={self.n_ctx}, n_ctx_vision={self.config.n_ctx_vision}, prefix={self.prompt_prefix!r}, "
            f"depth_text={self.depth_text}, depth_vision={self.depth_vision}, classes={len(self.classnames)}"
        )


LEARNERS.register("promptsrc", PromptSRC)

__all__ = ["PromptSRC", "PromptSRCConfig", "own_prompt_state", "reference_key_map"]
