"""Training objectives (terms) that plug into any learner through `StepState`.

Importing this package registers every objective in `OBJECTIVES`: `cross_entropy`, `kgcoop`, `cpt`,
`npt`, `tcpt`, `global_etf`, `zsnorm`, `penalty`, `promptsrc`, `coprompt`, `dekg`, `prograd`, `dpc`. Each file also
exposes its math as plain functions
(e.g. `from tailprompt.objectives.cpt import intra_cluster_etf_loss`) for use in any training loop.
"""

from tailprompt.objectives import (  # noqa: F401  (imported for their OBJECTIVES.register side effect)
    coprompt,
    cpt,
    cross_entropy,
    dekg,
    dpc,
    global_etf,
    kgcoop,
    npt,
    penalty,
    prograd,
    promptsrc,
    tcpt,
    zsnorm,
)
from tailprompt.objectives.base import (
    OBJECTIVES,
    OPTIONAL_FIELDS,
    Objective,
    ObjectiveContext,
    ObjectiveSpec,
    StepState,
    per_image_mean,
)
from tailprompt.objectives.coprompt import description_consistency_loss, image_consistency_loss
from tailprompt.objectives.cpt import (
    cross_modal_convergence_loss,
    intra_cluster_etf_loss,
    rotation_stability_loss,
)
from tailprompt.objectives.cross_entropy import cross_entropy_loss
from tailprompt.objectives.dekg import hsic_independence_loss
from tailprompt.objectives.global_etf import global_etf_loss
from tailprompt.objectives.kgcoop import knowledge_guidance_loss
from tailprompt.objectives.npt import language_collapse_loss, modality_isomorphism_loss
from tailprompt.objectives.penalty import zero_shot_range_penalty
from tailprompt.objectives.prograd import project_gradients_, projected_gradient, zero_shot_guide_loss
from tailprompt.objectives.tcpt import logit_margins, margin_mean_variance_loss, text_moment_matching_loss
from tailprompt.objectives.zsnorm import zero_shot_range_logits, zsnorm_loss

__all__ = [
    "OBJECTIVES",
    "OPTIONAL_FIELDS",
    "Objective",
    "ObjectiveContext",
    "ObjectiveSpec",
    "StepState",
    "cross_entropy_loss",
    "description_consistency_loss",
    "cross_modal_convergence_loss",
    "global_etf_loss",
    "hsic_independence_loss",
    "image_consistency_loss",
    "intra_cluster_etf_loss",
    "knowledge_guidance_loss",
    "language_collapse_loss",
    "logit_margins",
    "margin_mean_variance_loss",
    "modality_isomorphism_loss",
    "per_image_mean",
    "project_gradients_",
    "projected_gradient",
    "rotation_stability_loss",
    "text_moment_matching_loss",
    "zero_shot_range_logits",
    "zero_shot_guide_loss",
    "zero_shot_range_penalty",
    "zsnorm_loss",
]
