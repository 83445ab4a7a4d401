"""PromptSRC's self-regulating consistency terms (Khattak et al., ICCV 2023), as its code computes them.

Reference muzairkhattak/PromptSRC `trainers/promptsrc.py` (`CustomCLIP.forward`,
`PromptSRC.forward_backward`); the loss there is `CE + L_SCL` with

    scl_text   = L1(g, g_zs), mean over all K x D entries              (TEXT_LOSS_WEIGHT 25)
    scl_image  = L1(f, f_zs), mean over all B x D entries              (IMAGE_LOSS_WEIGHT 10)
    scl_logits = KL(p_zs || p) = kl_div(log p, log p_zs, sum) / (B K)  (weight 1)

where `g` are the learned normalised class text features, `g_zs` the frozen class features averaged
over the 60 `IMAGENET_TEMPLATES` (mean of the unnormalised features, normalised after the mean),
`f` the prompted normalised image features, `f_zs` the frozen image tower's normalised features of
the same images, `p = softmax(logits)` and `p_zs = softmax(logit_scale * f_zs @ g_zs^T)`: the
zero-shot distribution of the ensemble, not of the dataset's single template. `F.kl_div(input,
target)` computes KL(target || input), so the zero-shot distribution comes first. The reference's
terms carry their weights inside; here they are returned unweighted and the weights are the
objective's `weights` (defaults 25 / 10 / 1).

The ensemble teacher is fixed for a run: `build` encodes it once from the context's backbone and class
names (`ensemble_text_features`, `data.templates.PROMPTSRC_TEMPLATES`). The reference multiplies by
`fixed_embeddings.half()` in the zero-shot logits only to match its fp16 image features; fp32 here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from tailprompt.data.templates import PROMPTSRC_TEMPLATES
from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState, per_image_mean
from tailprompt.tensors import unit

if TYPE_CHECKING:
    from tailprompt.backbone import FrozenVLM


@dataclass
class PromptSRCObjectiveConfig:
    """No options besides the weights (`weights: {scl_text: 25, scl_image: 10, scl_logits: 1}`)."""


def ensemble_text_features(
    backbone: FrozenVLM, classnames: Sequence[str], templates: Sequence[str], chunk: int = 2048
) -> Tensor:
    """PromptSRC's frozen text teacher `[K, D]`: the mean over templates of the *unnormalised* text features,
    normalised after the mean (`VLPromptLearner.fixed_embeddings`, normalised in `CustomCLIP.forward`).

    All `T x K` texts go through the text tower in batches of `chunk` (one call per template is mostly
    overhead for small label spaces)."""
    names = [n.replace("_", " ") for n in classnames]  # as the reference writes class names into prompts
    texts = [t.replace("{}", n) for t in templates for n in names]
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = backbone.tokenize(texts)
        feats = torch.cat([backbone.encode_text(tokens[i : i + chunk]).float() for i in range(0, len(texts), chunk)])
    if caught:  # a closed-vocabulary backbone names the words it does not know; one line says it all
        warnings.warn(f"promptsrc: ensemble templates: {caught[0].message}", stacklevel=2)
    per_class = feats.reshape(len(templates), len(names), -1).transpose(0, 1)  # [K, T, D], the reference's stack
    return unit(per_class.mean(dim=1))


def text_consistency_loss(text_feats: Tensor, ensemble_text_feats: Tensor) -> Tensor:
    """Mean absolute difference between learned `[K, D]` (or per image `[B, K, D]`) and frozen `[K, D]`
    class features; the frozen side is a constant."""
    frozen = ensemble_text_feats.detach()
    return per_image_mean(text_feats, lambda t: F.l1_loss(t, frozen, reduction="mean"))


def image_consistency_loss(image_feats: Tensor, frozen_image_feats: Tensor) -> Tensor:
    """Mean absolute difference between prompted `[B, D]` and frozen `[B, D]` image features."""
    return F.l1_loss(image_feats, frozen_image_feats.detach(), reduction="mean")


def zeroshot_distillation_loss(logits: Tensor, zeroshot_logits: Tensor) -> Tensor:
    """`KL(softmax(zeroshot_logits) || softmax(logits))` summed over `[B, K]` and divided by `B * K`."""
    return F.kl_div(
        F.log_softmax(logits, dim=1),
        F.log_softmax(zeroshot_logits.detach(), dim=1),
        reduction="sum",
        log_target=True,
    ) / logits.numel()


def ensemble_zeroshot_logits(frozen_image_feats: Tensor, ensemble_text_feats: Tensor, logit_scale: float) -> Tensor:
    """`logit_scale * f_zs @ g_zs^T` -> `[B, K]`: the frozen model's logits with the ensemble classifier."""
    return logit_scale * frozen_image_feats @ ensemble_text_feats.t()


def promptsrc_terms(state: StepState, ensemble_text_feats: Tensor) -> dict[str, Tensor]:
    """The three unweighted terms of one step, given the run's ensemble teacher `[K, D]`."""
    frozen_image = state.frozen_image_feats
    if frozen_image is None:
        raise ValueError("promptsrc reads frozen_image_feats, but the step has none")
    ensemble = ensemble_text_feats.to(state.logits.device)
    zeroshot = ensemble_zeroshot_logits(frozen_image, ensemble, state.logit_scale)
    return {
        "scl_text": text_consistency_loss(state.text_feats, ensemble),
        "scl_image": image_consistency_loss(state.image_feats, frozen_image),
        "scl_logits": zeroshot_distillation_loss(state.logits, zeroshot),
    }


def build_promptsrc(
    cfg: PromptSRCObjectiveConfig, context: ObjectiveContext
) -> Callable[[StepState], dict[str, Tensor]]:
    """Encode the run's ensemble teacher once; the terms close over it."""
    if context.backbone is None:
        raise ValueError("promptsrc encodes its template-ensemble teacher at build time and needs the backbone")
    ensemble = ensemble_text_features(context.backbone, context.classnames, PROMPTSRC_TEMPLATES)

    def terms(state: StepState) -> dict[str, Tensor]:
        return promptsrc_terms(state, ensemble)

    return terms


OBJECTIVES.register(
    "promptsrc",
    ObjectiveSpec(
        PromptSRCObjectiveConfig,
        build_promptsrc,
        default_weights={"scl_text": 25.0, "scl_image": 10.0, "scl_logits": 1.0},
        reads=frozenset({"frozen_image_feats"}),
    ),
)

__all__ = [
    "ensemble_text_features",
    "ensemble_zeroshot_logits",
    "image_consistency_loss",
    "promptsrc_terms",
    "text_consistency_loss",
    "zeroshot_distillation_loss",
]
