"""KgCoOp: CoOp whose learned class features are kept close to the hand-crafted ones.

Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization" (CVPR 2023);
reference htyao89/KgCoOp `KgCoOp/trainers/kgcoop.py`. The prompt learner is CoOp's (4 context vectors
from "a photo of a", class token at the end); the guidance term `W * (1 - mean_k cos(w_k, w_clip_k))`
is the separate objective `kgcoop`, so this file only fixes the learner's defaults and teaches
`load_prompt_state` the reference's extra, never-trained parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tailprompt.prompts.base import LEARNERS, LearnerSpec
from tailprompt.prompts.coop import ClassTokenPosition, CoOp, check_context_config

# Present in the reference prompt learner but frozen there (only names containing "ctx" train). DeKg's
# prompt learner (cnunlp/DeKg `trainers/DeKg.py`, same layout) also holds its second CLIP's image tower.
KGCOOP_UNUSED_REFERENCE_KEYS = ("bias_vectors", "meta_net.", "image_encoder.")


@dataclass
class KgCoOpConfig:
    """KgCoOp learner defaults (`vit_b16_ep100_ctxv1`: CTX_INIT True = "a photo of a", N_CTX 4, CSC False)."""

    n_ctx: int = 4
    ctx_init: str = "a photo of a"  # "" = random N(0, 0.02) contexts
    class_token_position: ClassTokenPosition = "end"  # the reference implements "end" only
    csc: bool = False

    def __post_init__(self) -> None:
        check_context_config(self.n_ctx, self.ctx_init, self.csc)


def build_kgcoop(config: KgCoOpConfig, backbone: Any, classnames: list[str], template: str) -> CoOp:
    """`LearnerSpec.build` for `kgcoop`: a CoOp learner named "kgcoop"."""
    return CoOp(
        backbone,
        classnames,
        n_ctx=config.n_ctx,
        ctx_init=config.ctx_init,
        class_token_position=config.class_token_position,
        csc=config.csc,
        name="kgcoop",
        ignored_reference_keys=KGCOOP_UNUSED_REFERENCE_KEYS,
    )


LEARNERS.register("kgcoop", LearnerSpec(KgCoOpConfig, build_kgcoop))

__all__ = ["KgCoOpConfig", "build_kgcoop"]
