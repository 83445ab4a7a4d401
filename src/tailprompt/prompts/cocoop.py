"""CoCoOp: CoOp's context shifted per image by a small meta-network.

Zhou et al., "Conditional Prompt Learning for Vision-Language Models" (CVPR 2022); reference
KaiyangZhou/CoOp `trainers/cocoop.py`. For an image with normalised feature x, every context token
becomes `v_m(x) = v_m + pi(x)` with `pi = Linear(D, D//16) -> ReLU -> Linear(D//16, W)` (D = the joint
embedding width, the reference's `visual.output_dim`), and the whole class-prompt set is re-encoded
with that image's context: text features are `[B, K, D]`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tailprompt.prompts.common import (
    LearnerError,
    assemble_prompts,
    class_prompts,
    encode_prompt_embeddings,
    image_chunks,
    initial_context,
    install_class_prompts,
    shared_context_prefix,
)
from tailprompt.prompts.coop import check_context_config
from tailprompt.prompts.learner import LEARNERS, PromptLearner

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM


@dataclass
class CoCoOpConfig:
    """CoCoOp defaults (`vit_b16_c4_ep10_batch1_ctxv1`: N_CTX 4, CTX_INIT "a photo of a")."""

    n_ctx: int = 4
    ctx_init: str = "a photo of a"  # "" = random N(0, 0.02) contexts
    # Text sequences per text-tower call: images are encoded in groups of max(1, this // K) so a
    # large evaluation batch does not hold B*K prompts at once (0 = one call for the whole batch).
    max_sequences_per_call: int = 8192

    def __post_init__(self) -> None:
        check_context_config(self.n_ctx, self.ctx_init)
        if self.max_sequences_per_call < 0:
            raise ValueError(f"max_sequences_per_call: expected >= 0, got {self.max_sequences_per_call}")


def meta_net(vis_dim: int, ctx_dim: int) -> nn.Sequential:
    """The reference's Meta-Net, with its parameter names (`linear1.*`, `linear2.*`)."""
    if vis_dim // 16 < 1:
        raise LearnerError(
            f"cocoop: the meta-net needs an embedding width >= 16 (vis_dim // 16), got {vis_dim}"
        )
    return nn.Sequential(
        OrderedDict(
            [
                ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
                ("relu", nn.ReLU()),
                ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
            ]
        )
    )


class CoCoOp(PromptLearner):
    """CoCoOp prompt learner. Trainable: `ctx` `[M, W]`, `meta_net.linear{1,2}.{weight,bias}`."""

    name = "cocoop"
    config_cls = CoCoOpConfig
    instance_conditioned = True

    def __init__(self, config: CoCoOpConfig, backbone: FrozenVLM, classnames: list[str], template: str) -> None:
        super().__init__(config, backbone)
        self.max_sequences_per_call = config.max_sequences_per_call
        # Same construction (and global-RNG) order as the reference: ctx, then the meta-net.
        self.n_ctx, self.prompt_prefix, ctx = initial_context(backbone, config.n_ctx, config.ctx_init)
        self.ctx = nn.Parameter(ctx.to(backbone.device))
        self.meta_net = meta_net(backbone.embed_dim, backbone.text_width).to(backbone.device)
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str, seen: bool = True) -> None:
        """Rebuild the class-name buffers for a new label space; `ctx` and the meta-net are kept."""
        buffers = class_prompts(self.backbone, classnames, self.prompt_prefix, self.n_ctx)
        install_class_prompts(self, buffers)
        self.classnames = list(classnames)

    def conditioned_context(self, image_feats: Tensor) -> Tensor:
        """`ctx + meta_net(x)` -> `[B, M, W]` for normalised image features `[B, D]`."""
        bias = self.meta_net(image_feats.to(self.ctx.dtype))  # [B, W]
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def prompt_embeddings(self, image_feats: Tensor) -> Tensor:
        """Per-image class prompts `[B, K, L, W]`."""
        k = self.token_prefix.shape[0]
        ctx = self.conditioned_context(image_feats)  # [B, M, W]
        ctx = ctx.unsqueeze(1).expand(-1, k, -1, -1)  # [B, K, M, W]
        return assemble_prompts(self.token_prefix, ctx, self.token_suffix)

    def text_features(self, image_feats: Tensor | None = None) -> Tensor:
        """Normalised per-image class features `[B, K, D]`.

        Args:
            image_feats: L2-normalised image features `[B, D]` (the engine's contract; the reference
                normalises before the meta-net, so they are used as given).

        The reference loops over images, encoding K prompts per image; here groups of images go
        through the text tower in one call of up to `max_sequences_per_call` sequences.
        """
        if image_feats is None:
            raise LearnerError("cocoop is instance-conditioned: text_features needs image_feats [B, D]")
        b, k = image_feats.shape[0], self.token_prefix.shape[0]
        chunks = []
        for chunk in image_chunks(b, k, self.max_sequences_per_call):
            prompts = self.prompt_embeddings(image_feats[chunk])  # [b', K, L, W]
            # One group of K class prompts per image: its [SOS][ctx + pi(x)] prefix runs once.
            prefix = shared_context_prefix(self.n_ctx)
            chunks.append(encode_prompt_embeddings(self.backbone, prompts, self.eot, shared_prefix=prefix))
        return torch.cat(chunks, dim=0)

    def extra_repr(self) -> str:
        return f"n_ctx={self.n_ctx}, prefix={self.prompt_prefix!r}, classes={len(self.classnames)}"


LEARNERS.register("cocoop", CoCoOp)

__all__ = ["CoCoOp", "CoCoOpConfig", "meta_net"]
