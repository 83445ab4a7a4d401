"""MaPLe: coupled text and vision prompts in the first J blocks of both towers.

Khattak et al., "MaPLe: Multi-modal Prompt Learning" (CVPR 2023); reference
muzairkhattak/multimodal-prompt-learning `trainers/maple.py` and `clip/model.py`.

- Text: `[SOS][P_0 (n_ctx tokens)][rest of the init text][name][.][EOS]`; with the default
  `n_ctx=2, ctx_init="a photo of a"`, `P_0` starts as the embeddings of "a photo" and "of a" stays as
  fixed tokens. In text blocks `1 .. J-1` the outputs at positions `1 .. n_ctx` are replaced by `P_i`
  (`compound_prompts_text.<i-1>`, N(0, 0.02)).
- Vision: `F_0(P_0)` with `F_0 = proj = Linear(W_text, W_vision)` is appended after CLS + patch tokens
  (after the positional embedding, before `ln_pre`); in vision blocks `1 .. J-1` the last `n_ctx`
  tokens are replaced by `F_i(P_i)` (`compound_prompt_projections.<i-1>`, deep copies of one
  initialised Linear, so all start equal).
- `round_prompts_fp16`: the reference's `clip/model.py` casts the deep prompts (both towers) and the
  projected layer-0 vision prompt with `.half()` even in fp32 runs, so they enter the towers rounded to
  fp16 (the layer-0 text context is not rounded); that moves logits by ~1e-4. Off by default (plain
  fp32); on, the learner reproduces the reference's fp32 outputs.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tailprompt.prompts.common import (
    LearnerError,
    assemble_prompts,
    backbone_dtype,
    class_prompts,
    install_class_prompts,
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


@dataclass
class MaPLeConfig:
    """MaPLe defaults (`vit_b16_c2_ep5_batch4_2ctx`); cross-dataset / DG use `prompt_depth=3`."""

    n_ctx: int = 2  # prompt tokens per layer (text and vision)
    ctx_init: str = "a photo of a"  # first n_ctx tokens initialise P_0, the rest stay fixed ("" = random)
    prompt_depth: int = 9  # J: layers 0 .. J-1 carry prompts; clamped to the backbone's depth
    # The reference's clip/model.py casts the deep prompts and the projected layer-0 vision prompt with
    # `.half()` even in fp32 runs; true rounds them through fp16 the same way to match its outputs.
    round_prompts_fp16: bool = False

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx: expected >= 1, got {self.n_ctx}")
        if self.prompt_depth < 1:
            raise ValueError(f"prompt_depth: expected >= 1 (1 = shallow MaPLe), got {self.prompt_depth}")


def tower_depths(backbone: FrozenVLM) -> tuple[int, int | None]:
    """(text blocks, vision blocks) of the backbone; vision is None for a convolutional image tower."""
    return backbone.text_layers, backbone.vision_layers


def effective_depth(backbone: FrozenVLM, prompt_depth: int, learner: str = "maple") -> int:
    """`prompt_depth` clamped to the shallower tower (prompts of layer i go into block i, i < depth).

    The reference allows at most 12 on ViT-B/16 and silently ignores deeper prompts; here a depth
    beyond the backbone is cut with a warning, so no parameter is created that never trains.
    """
    depths = [d for d in tower_depths(backbone) if d is not None]
    if not depths or prompt_depth <= min(depths):
        return prompt_depth
    limit = min(depths)
    warnings.warn(
        f"{learner}: prompt_depth={prompt_depth} exceeds the backbone's {limit} transformer blocks; "
        f"using {limit}",
        stacklevel=3,
    )
    return limit


class MaPLe(PromptLearner):
    """MaPLe prompt learner; parameter names follow the reference's `MultiModalPromptLearner`.

    Trainable: `ctx` `[n, W]`, `proj.{weight,bias}` (`W -> Wv`), `compound_prompts_text.<i>` `[n, W]`,
    `compound_prompt_projections.<i>.{weight,bias}` for `i < prompt_depth - 1`.
    """

    name = "maple"
    config_cls = MaPLeConfig
    uses_image_tower = True

    def __init__(self, config: MaPLeConfig, backbone: FrozenVLM, classnames: list[str], template: str) -> None:
        super().__init__(config, backbone)
        n_ctx, ctx_init, prompt_depth = config.n_ctx, config.ctx_init, config.prompt_depth
        if not getattr(backbone, "has_vit", False) or backbone.vision_width is None:
            raise LearnerError(
                f"{self.name} prompts the image transformer, but backbone {getattr(backbone, 'arch', '?')!r} "
                "has a convolutional image tower (has_vit=False); use a ViT backbone (e.g. "
                "backbone.name=embedded-vit, tiny-vit or ViT-B-16) or a text-only learner (coop, cocoop, kgcoop)"
            )
        self.prompt_depth = effective_depth(backbone, prompt_depth, self.name)
        self.n_ctx = n_ctx
        width, vision_width = backbone.text_width, backbone.vision_width
        # Construction (and global-RNG) order as the reference: ctx, proj, deep text prompts, projections.
        if ctx_init and n_ctx <= _MAX_WORD_INIT_CTX:
            self.prompt_prefix = ctx_init.replace("_", " ")
            ctx = word_context(backbone, self.prompt_prefix, n_ctx)
        else:
            self.prompt_prefix = " ".join(["X"] * n_ctx)
            ctx = random_context((n_ctx, width), None)
        self.proj = nn.Linear(width, vision_width)
        self.ctx = nn.Parameter(ctx)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, width)) for _ in range(self.prompt_depth - 1)]
        )
        for prompt in self.compound_prompts_text:
            nn.init.normal_(prompt, std=0.02)
        single_layer = nn.Linear(width, vision_width)
        self.compound_prompt_projections = nn.ModuleList(
            [copy.deepcopy(single_layer) for _ in range(self.prompt_depth - 1)]
        )
        self.to(backbone.device)
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
        """Rebuild the class-name buffers for a new label space; every prompt parameter is kept."""
        buffers = class_prompts(self.backbone, classnames, self.prompt_prefix, self.n_ctx)
        install_class_prompts(self, buffers)
        self.classnames = list(classnames)

    def prompt_embeddings(self) -> Tensor:
        """Layer-0 text prompts `[K, L, W]`: `[SOS][ctx][suffix]`."""
        return assemble_prompts(self.token_prefix, self.ctx, self.token_suffix)

    def as_reference_rounds(self, prompt: Tensor) -> Tensor:
        """`prompt` through fp16 and back when `round_prompts_fp16` (the reference's `.half()`), else as is."""
        return prompt.half().to(prompt.dtype) if self.config.round_prompts_fp16 else prompt

    def deep_text_prompts(self) -> list[Tensor]:
        """`P_1 .. P_{J-1}`, each `[n, W]`: they replace positions `1..n` at the input of text block i."""
        return [self.as_reference_rounds(p) for p in self.compound_prompts_text]

    def vision_prompts(self) -> tuple[Tensor, list[Tensor]]:
        """(`F_0(P_0)` `[n, Wv]` appended after the patch tokens, `[F_i(P_i)]` replacing them in block i)."""
        shared = self.as_reference_rounds(self.proj(self.ctx))
        deep = [
            self.as_reference_rounds(layer(p))
            for layer, p in zip(self.compound_prompt_projections, self.compound_prompts_text)
        ]
        return shared, deep

    def unnormalised_text_features(self) -> Tensor:
        """Class text features `[K, D]` as the text tower outputs them (before normalisation)."""
        dtype = backbone_dtype(self.backbone)
        deep = [p.to(dtype) for p in self.deep_text_prompts()]
        prompts = self.prompt_embeddings().to(dtype)
        return self.backbone.encode_text_from_embeddings(
            prompts, self.eot, deep or None, shared_prefix=shared_context_prefix(self.n_ctx)
        )

    def unnormalised_image_features(self, images: Tensor) -> Tensor:
        """Prompted image features `[B, D]` of images `[B, 3, H, W]` (before normalisation)."""
        dtype = backbone_dtype(self.backbone)
        shared, deep = self.vision_prompts()
        return self.backbone.encode_image_with_prompts(
            images.to(dtype), shared.to(dtype), [d.to(dtype) for d in deep] or None
        )

    def text_features(self, image_feats: Tensor | None = None) -> Tensor:
        """Normalised class text features `[K, D]`; `image_feats` is ignored."""
        return unit(self.unnormalised_text_features())

    def image_features(self, images: Tensor) -> Tensor:
        """Normalised prompted image features `[B, D]` of images `[B, 3, H, W]`."""
        return unit(self.unnormalised_image_features(images))

    def extra_repr(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, prefix={self.prompt_prefix!r}, depth={self.prompt_depth}, "
            f"classes={len(self.classnames)}"
        )


LEARNERS.register("maple", MaPLe)

__all__ = ["MaPLe", "MaPLeConfig", "effective_depth", "tower_depths"]
