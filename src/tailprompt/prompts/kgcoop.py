"""KgCoOp: CoOp whose learned class features are kept close to the hand-crafted ones.

Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization" (CVPR 2023);
reference htyao89/KgCoOp `KgCoOp/trainers/kgcoop.py`. The prompt learner is CoOp's (4 context vectors
from "a photo of a", class token at the end); the guidance term `W * (1 - mean_k cos(w_k, w_clip_k))`
is the separate objective `kgcoop`, so this file only fixes the learner's defaults and teaches
`load_prompt_state` the reference's extra, never-trained parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from tailprompt.prompts.coop import ClassTokenPosition, CoOp, check_context_config
from tailprompt.prompts.learner import LEARNERS


@dataclass
class KgCoOpConfig:
    """KgCoOp learner defaults (`vit_b16_ep100_ctxv1`: CTX_INIT True = "a photo of a", N_CTX 4, CSC False)."""

    n_ctx: int = 4
    ctx_init: str = "a photo of a"  # "" = random N(0, 0.02) contexts
    class_token_position: ClassTokenPosition = "end"  # the reference implements "end" only
    csc: bool = False

    def __post_init__(self) -> None:
        check_context_config(self.n_ctx, self.ctx_init, self.csc)


class KgCoOp(CoOp):
    """CoOp's learner under KgCoOp's name, defaults and reference keys."""

    name = "kgcoop"
    config_cls = KgCoOpConfig
    # Present in the reference prompt learner but frozen there (only names containing "ctx" train). DeKg's
    # prompt learner (cnunlp/DeKg `trainers/DeKg.py`, same layout) also holds its second CLIP's image tower.
    ignored_reference_keys = ("bias_vectors", "meta_net.", "image_encoder.")


LEARNERS.register("kgcoop", KgCoOp)

__all__ = ["KgCoOp", "KgCoOpConfig"]
