"""The objective contract: every training term reads one `StepState` and returns named scalars.

An objective is a pure function of tensors plus a thin registered wrapper. The engine builds one
`StepState` per step, calls every configured objective, and minimises `sum(weight * term)` while
logging each term on its own. Adding an objective = one new file + one `OBJECTIVES.register` line.

Fields of `StepState` that cost extra work (another tower pass, a second view, description features) are
filled only when some configured objective names them in `ObjectiveSpec.reads`; the others stay None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tailprompt.registry import Registry

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM
    from tailprompt.clustering import ClusterResult


@dataclass
class StepState:
    """Everything a training term may need for one step.

    Shapes: B images, K classes of the training label space, D joint embedding width. Features are
    L2-normalised fp32. For instance-conditioned learners (CoCoOp) `text_feats` is `[B, K, D]`; a term
    defined on class prototypes then applies per image and averages (`per_image_mean`).
    """

    logits: Tensor  # [B, K] scaled by logit_scale
    labels: Tensor  # [B] in 0..K-1
    image_feats: Tensor  # [B, D] the learner's (possibly prompted) image features
    text_feats: Tensor  # [K, D] or [B, K, D] learned class features
    frozen_text_feats: Tensor  # [K, D] backbone features of the dataset's zero-shot template
    class_ids: Tensor  # [K] ids of the training label space (0..K-1)
    logit_scale: float  # exp of the backbone's learned log-scale (~100 for OpenAI CLIP)
    clusters: Tensor | None = None  # [K] cluster id per class, when an objective needs_clusters
    # --- filled only when a configured objective lists the name in `reads`
    frozen_image_feats: Tensor | None = None  # [B, D] the frozen image tower on the batch's view
    zeroshot_logits: Tensor | None = None  # [B, K] logit_scale * frozen_image @ frozen_text.T
    teacher_image_feats: Tensor | None = None  # [B, D] frozen features of another augmented view
    description_text_feats: Tensor | None = None  # [K, D] one description per class, index drawn per step
    encode_training_images: Callable[[Tensor], Tensor] | None = None  # item indices [N] -> learner [N, D]
    aux: dict[str, Tensor] = field(default_factory=dict)  # learner.aux_outputs() entries that are read
    item_indices: Tensor | None = None  # [B] positions of the batch's images in the training items
    generator: torch.Generator | None = None  # the run's CPU generator: per-step draws stay resumable


# Names an objective may list in `reads`: the optional fields above (the rest are always set).
OPTIONAL_FIELDS = frozenset(
    f.name for f in fields(StepState) if f.name not in {"aux", "item_indices", "generator", "clusters"}
    and f.default is None
)


@dataclass
class ObjectiveContext:
    """Build-time facts for objectives (one per run, training label space).

    Teachers that are fixed for the run (PromptSRC's template ensemble, say) are computed once in the
    objective's `build` from `backbone`, `classnames` and `template`, not per step.
    """

    frozen_text_feats: Tensor  # [K, D] normalised, the dataset template's
    classnames: list[str]
    backbone: FrozenVLM | None = None
    clusters: ClusterResult | None = None  # the partition, when the objective needs_clusters
    template: str = "a photo of a {}."  # the dataset's zero-shot template
    # Classes of the images `StepState.encode_training_images` addresses: the run's N training items (indices
    # 0..N-1, as `item_indices`), then, when an objective's config sets `image_pool: train_split`, the other
    # images of the training split in the training label space (indices N.., classes in `extra_labels`).
    training_labels: list[int] = field(default_factory=list)
    extra_labels: list[int] = field(default_factory=list)


GradientTransform = Callable[[Sequence[nn.Parameter], dict[str, Tensor]], None]


@dataclass
class Objective:
    """A built objective: its term function and, optionally, a gradient transform.

    `transform_gradients(params, terms)` runs after the backward pass of the weighted total (the graph is
    kept) and before the optimiser step; it gets the learner's trainable parameters and this objective's
    raw terms (with their graphs) and may rewrite `p.grad` (ProGrad's projection).
    """

    terms: Callable[[StepState], dict[str, Tensor]]
    transform_gradients: GradientTransform | None = None


@dataclass(frozen=True)
class ObjectiveSpec:
    """How an objective is built: its config dataclass and a builder.

    `build(config, context)` returns an `Objective` (or a bare term function, taken as `Objective(fn)`)
    whose terms are scalar and unweighted. `default_weights` maps each term name to its default weight;
    a term of weight 0 is computed and logged but not minimised. `reads` names the optional `StepState`
    fields (`OPTIONAL_FIELDS`) and learner aux outputs the terms read; `needs_clusters` asks the engine
    for the frozen partition (`config.cluster_settings()`), delivered in `StepState.clusters`.
    """

    config_cls: type
    build: Callable[[Any, ObjectiveContext], Objective | Callable[[StepState], dict[str, Tensor]]]
    default_weights: dict[str, float]
    reads: frozenset[str] = frozenset()
    needs_clusters: bool = False

    def make(self, config: Any, context: ObjectiveContext) -> Objective:
        built = self.build(config, context)
        return built if isinstance(built, Objective) else Objective(built)


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective")


def per_image_mean(text_feats: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply a class-prototype term `fn([K,D]) -> scalar` to `[K,D]`, or per image to `[B,K,D]` and average."""
    if text_feats.dim() == 2:
        return fn(text_feats)
    return torch.stack([fn(t) for t in text_feats]).mean()
