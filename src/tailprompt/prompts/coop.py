"""CoOp: learnable context vectors in front of (or around) each class name.

Zhou et al., "Learning to Prompt for Vision-Language Models" (IJCV 2022); reference
KaiyangZhou/CoOp `trainers/coop.py`. The prompt of class k is `[SOS][v_1 .. v_M][name_k][.][EOS]`
with shared (or class-specific, CSC) context vectors `v`, encoded by the frozen text tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import Tensor, nn

from tailprompt.prompts.common import (
    LearnerError,
    assemble_prompts,
    class_prompts,
    class_token_order,
    count_words,
    encode_prompt_embeddings,
    initial_context,
    install_class_prompts,
    shared_context_prefix,
)
from tailprompt.prompts.learner import LEARNERS, PromptLearner

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM

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


class CoOp(PromptLearner):
    """CoOp prompt learner (also KgCoOp's, which is CoOp with a guidance objective).

    Trainable parameters: `ctx` `[M, W]`, or `[K, M, W]` with class-specific contexts.
    """

    name = "coop"
    config_cls = CoOpConfig

    def __init__(self, config: CoOpConfig, backbone: FrozenVLM, classnames: list[str], template: str) -> None:
        super().__init__(config, backbone)
        self.class_token_position = config.class_token_position
        self.csc = config.csc
        self.n_ctx, self.prompt_prefix, ctx = self.initial_context(template, len(classnames) if config.csc else None)
        self.ctx = nn.Parameter(ctx.to(backbone.device))
        self.set_classnames(classnames, template)

    def initial_context(self, template: str, num_classes: int | None) -> tuple[int, str, Tensor]:
        """(n_ctx, prompt prefix text, initial ctx) from the config: CoOp's rule; ProGrad overrides it."""
        return initial_context(self.backbone, self.config.n_ctx, self.config.ctx_init, num_classes)

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
        """Rebuild the class-name buffers for a new label space; the context is kept.

        `template` is unused (the learned context replaces it).

        Raises:
            LearnerError: class-specific contexts cannot move to a different number of classes.
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
        prefix = shared_context_prefix(self.n_ctx, self.class_token_position, self.csc)
        return encode_prompt_embeddings(self.backbone, self.prompt_embeddings(), self.eot, shared_prefix=prefix)

    def extra_repr(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, prefix={self.prompt_prefix!r}, position={self.class_token_position}, "
            f"csc={self.csc}, classes={len(self.classnames)}"
        )


LEARNERS.register("coop", CoOp)

__all__ = ["CoOp", "CoOpConfig", "check_context_config"]
