"""CoOp: learnable context vectors in front of (or around) each class name.

Zhou et al., "Learning to Prompt for Vision-Language Models" (IJCV 2022); reference
KaiyangZhou/CoOp `trainers/coop.py`. The prompt of class k is `[SOS][v_1 .. v_M][name_k][.][EOS]`
with shared (or class-specific, CSC) context vectors `v`, encoded by the frozen text tower.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from tailprompt.prompts.base import LEARNERS, LearnerSpec
from tailprompt.prompts.common import (
    LearnerError,
    PromptModule,
    assemble_prompts,
    class_prompts,
    class_token_order,
    count_words,
    encode_prompt_embeddings,
    frozen_image_features,
    initial_context,
    install_class_prompts,
    load_prompt_state_into,
)

ClassTokenPosition = Literal["end", "middle", "front"]


@dataclass
class CoOpConfig:
    """CoOp hyper-parameters; defaults are the base-to-new row (CoCoOp paper's `vit_b16_ctxv1`).

    The few-shot paper row (`coop_fewshot`) is `n_ctx=16, ctx_init=""`.
    """

    n_ctx: int = 4  # context vectors; must equal the word count of ctx_init when it is set
    ctx_init: str = "a photo of a"  # init words ("" = random N(0, 0.02) contexts)
    class_token_position: ClassTokenPosition = "end"  # end | middle | front
    csc: bool = False  # class-specific contexts (one set per class; random init only, as the reference)

    def __post_init__(self) -> None:
        check_context_config(self.n_ctx, self.ctx_init, self.csc)


def check_context_config(n_ctx: int, ctx_init: str, csc: bool = False) -> None:
    """Reject settings the reference would silently reinterpret."""
    if n_ctx < 1:
        raise ValueError(f"n_ctx: expected >= 1, got {n_ctx}")
    if ctx_init:
        words = count_words(ctx_init)
        if words != n_ctx:
            # The reference overwrites n_ctx with the word count; say so instead of surprising.
            raise ValueError(
                f"n_ctx={n_ctx} but ctx_init {ctx_init!r} has {words} words (the reference uses one "
                f"context vector per init word): set n_ctx={words}, or ctx_init='' for {n_ctx} random vectors"
            )
        if csc:
            raise ValueError(
                "csc=true needs ctx_init='' (the reference initialises class-specific contexts randomly "
                "and ignores csc when ctx_init is set)"
            )


class CoOp(PromptModule):
    """CoOp prompt learner (also KgCoOp's, which is CoOp with a guidance objective).

    Trainable parameters: `ctx` `[M, W]`, or `[K, M, W]` with class-specific contexts.
    """

    def __init__(
        self,
        backbone: Any,
        classnames: list[str],
        n_ctx: int = 4,
        ctx_init: str = "a photo of a",
        class_token_position: str = "end",
        csc: bool = False,
        name: str = "coop",
        ignored_reference_keys: Iterable[str] = (),
        template: str = "{}",
    ) -> None:
        super().__init__(backbone)
        self.name = name
        self.class_token_position = class_token_position
        self.csc = csc
        self._ignored = tuple(ignored_reference_keys)
        self.n_ctx, self.prompt_prefix, ctx = self.initial_context(
            n_ctx, ctx_init, len(classnames) if csc else None, template
        )
        self.ctx = nn.Parameter(ctx.to(backbone.device))
        self.classnames: list[str] = []
        self.set_classnames(classnames, template)

    def initial_context(
        self, n_ctx: int, ctx_init: str, num_classes: int | None, template: str
    ) -> tuple[int, str, Tensor]:
        """(n_ctx, prompt prefix text, initial ctx): CoOp's rule (`initial_context`); ProGrad overrides it."""
        check_context_config(n_ctx, ctx_init, num_classes is not None)
        return initial_context(self.backbone, n_ctx, ctx_init, num_classes)

    def set_classnames(self, classnames: list[str], template: str) -> None:
        """Rebuild the class-name buffers for a new label space; the context is kept.

        `template` is unused (the learned context replaces it); it is part of the learner interface.

        Raises:
            ValueError: class-specific contexts cannot move to a different number of classes.
        """
        if self.csc and len(classnames) != self.ctx.shape[0]:
            raise LearnerError(
                f"{self.name}: class-specific contexts (csc=true) hold one context per class "
                f"({self.ctx.shape[0]} classes) and cannot transfer to {len(classnames)} classes"
            )
        buffers = class_prompts(self.backbone, classnames, self.prompt_prefix, self.n_ctx)
        install_class_prompts(self, buffers)
        order = None
        if self.class_token_position != "end":
            order = class_token_order(
                self.n_ctx, buffers.name_lens, buffers.tokens.shape[1], self.class_token_position
            ).to(self.ctx.device)
        self.register_buffer("token_order", order, persistent=False)
        self.classnames = list(classnames)

    def prompt_embeddings(self) -> Tensor:
        """Assembled prompts `[K, L, W]` (fp32); L is cut to the longest prompt's EOS + 1."""
        return assemble_prompts(self.token_prefix, self.ctx, self.token_suffix, self.token_order)

    def text_features(self, image_feats: Tensor | None = None) -> Tensor:
        """Normalised class text features `[K, D]`; `image_feats` is ignored (not instance-conditioned)."""
        return encode_prompt_embeddings(self.backbone, self.prompt_embeddings(), self.eot)

    def image_features(self, images: Tensor) -> Tensor:
        """Normalised frozen image features `[B, D]` of images `[B, 3, H, W]`."""
        return frozen_image_features(self.backbone, images)

    def load_prompt_state(self, state_dict: dict[str, Tensor]) -> None:
        """Load `ctx` from our `prompt_state` or a reference prompt-learner state dict."""
        load_prompt_state_into(self, state_dict, self.name, self._ignored)

    def extra_repr(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, prefix={self.prompt_prefix!r}, position={self.class_token_position}, "
            f"csc={self.csc}, classes={len(self.classnames)}"
        )


def build_coop(config: CoOpConfig, backbone: Any, classnames: list[str], template: str) -> CoOp:
    """`LearnerSpec.build` for `coop`."""
    return CoOp(
        backbone,
        classnames,
        n_ctx=config.n_ctx,
        ctx_init=config.ctx_init,
        class_token_position=config.class_token_position,
        csc=config.csc,
        name="coop",
    )


LEARNERS.register("coop", LearnerSpec(CoOpConfig, build_coop))

__all__ = ["CoOp", "CoOpConfig", "build_coop", "check_context_config"]
