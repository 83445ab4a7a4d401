"""DPC's Dynamic Hard Negative Optimizer: a contrastive loss on batches grown with hard negatives.

Li et al., "DPC: Dual-Prompt Collaboration for Tuning Vision-Language Models" (CVPR 2025); reference
JREion/DPC `trainers/sple_coop.py` (`parse_sple_batch_train`, `forward_backward`). Per step:

1. The frozen stage-1 model (the run DPC starts from) scores every class of the training label space
   for each batch image: `softmax(100 * f_i @ g_k^T)` (the reference hard-codes 100, not the learned
   scale), and the `top_k` classes are taken.
2. Hard negatives of image i: those top-k classes except its ground truth, in rank order, keeping only
   classes not yet in the grown batch (the ground truths of the whole batch and the negatives already
   chosen for earlier images: the reference's non-repeat rule; its `INFER_NONREPEAT` flag is never read,
   so the rule always applies). With `top_k = 1` no ranked class is taken (the reference's test
   `len(hn_labels) < top_k - 1` is then never true). When fewer than 2 remain, random classes are drawn
   from `1 .. K-2` (the reference's `random.randint(1, K - 2)`, at most K-2 draws, including one draw past
   the second hit) until 2 new ones are found.
3. One training image of each hard-negative class, drawn uniformly from that class's images
   (`random.choice`). The
   reference reads them from a per-dataset list it downloads (`SPLE_<Dataset>.json`, the training split);
   here the list is built from the run's own training items (`image_pool: training_items`, default: no
   image beyond the few-shot budget is seen) or from every image of the training split in the training
   label space (`image_pool: train_split`, what the reference's list holds).
4. The grown batch `[x_1, x_1's negatives, x_2, x_2's negatives, ...]` with labels
   `[y_1, n_11, n_12, ..., y_2, ...]` (distinct classes) gives image features `F [N, D]` and the learned
   text features of the labels `G [N, D]`; the loss is the symmetric CLIP contrastive loss
   `(CE(s F G^T, arange N) + CE(s G F^T, arange N)) / 2` with `s` the learned logit scale. It replaces
   cross-entropy: the reference's DPC stage trains on this term alone.

`top_k` is clamped to the number of classes (the reference's `topk(8)` fails on fewer than 8 classes,
e.g. EuroSAT's 5 base classes).

The random draws are Python `random.Random` calls in the reference's order (`randint(1, K - 2)` for the
top-up, then `choice(pool)` per negative), so a given `Random` state draws what the reference draws from
its global `random` in that state. The reference's global state runs through its whole process; here each
step seeds its own `Random` from the run's torch generator, which a resumed run restores.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tailprompt.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveSpec, StepState

# Names of the learner's aux outputs (tailprompt.prompts.dpc) this objective reads.
STAGE1_TEXT = "dpc_stage1_text_feats"
STAGE1_IMAGE = "dpc_stage1_image_feats"
# The reference ranks classes with a fixed scale, not the backbone's learned logit scale.
STAGE1_SCORE_SCALE = 100.0
# Fewer hard negatives than this for an image and the reference tops them up with random classes.
MIN_NEGATIVES = 2


def stage1_class_scores(image_feats: Tensor, stage1_text_feats: Tensor) -> Tensor:
    """`softmax(100 * image @ text^T)`: `[B, D]`, `[K, D]` (normalised) -> `[B, K]` (no gradient)."""
    with torch.no_grad():
        return (STAGE1_SCORE_SCALE * image_feats.float() @ stage1_text_feats.float().t()).softmax(dim=-1)


def random_fill(num_classes: int, chosen: list[int], taken: list[int], rng: random.Random) -> None:
    """Top `chosen` up to 2 classes with random ones from `1 .. K-2` not in `taken` (both lists grow).

    The reference makes at most K-2 draws and draws once more after the list is full before it stops;
    the same number of draws is made here so the generator stays in step with that loop.
    """
    for _ in range(num_classes - 2):
        candidate = rng.randint(1, num_classes - 2)
        if len(chosen) >= MIN_NEGATIVES:
            break
        if candidate not in taken:
            chosen.append(candidate)
            taken.append(candidate)


def image_negatives(scores: Tensor, label: int, top_k: int, taken: list[int], rng: random.Random) -> list[int]:
    """Hard-negative classes of one image: `scores [K]`, its `label`; `taken` (classes already in the grown
    batch) grows with the result."""
    num_classes = scores.shape[0]
    chosen = []
    # Row by row as the reference: underflowed scores tie at 0, and a batched topk may break those ties
    # differently.
    ranked = scores.topk(min(top_k, num_classes)).indices.tolist() if top_k >= 2 else []
    for c in ranked:
        if c != label and c not in taken:
            chosen.append(c)
            taken.append(c)
    if len(chosen) < MIN_NEGATIVES:
        random_fill(num_classes, chosen, taken, rng)
    return chosen


def hard_negative_classes(scores: Tensor, labels: Tensor, top_k: int, rng: random.Random) -> list[list[int]]:
    """Hard-negative classes of every image under the non-repeat rule.

    Args:
        scores: `[B, K]` stage-1 class scores (`stage1_class_scores`).
        labels: `[B]` ground-truth classes.
        top_k: classes ranked per image (clamped to K); the ground truth among them is skipped.
        rng: draws the random top-up when an image keeps fewer than 2 negatives.

    Returns:
        B lists of distinct class ids; no class appears twice across the lists or equals a batch label.
    """
    truth = labels.tolist()
    taken = list(truth)
    return [image_negatives(scores[i], label, top_k, taken, rng) for i, label in enumerate(truth)]


def hard_negative_batch(
    scores: Tensor, labels: Tensor, top_k: int, pools: Sequence[Sequence[int]], rng: random.Random
) -> tuple[list[list[int]], list[int]]:
    """(hard-negative classes per image, one drawn image index per negative, flat in batch order).

    Draws in the reference's order: an image's negatives (with any random top-up), then its images, then
    the next image's.
    """
    truth = labels.tolist()
    taken = list(truth)
    negatives: list[list[int]] = []
    picked: list[int] = []
    for i, label in enumerate(truth):
        negatives.append(image_negatives(scores[i], label, top_k, taken, rng))
        picked += pick_class_images(negatives[-1], pools, rng)
    return negatives, picked


def class_image_pools(labels: Sequence[int], num_classes: int) -> list[list[int]]:
    """Indices of the images of each class: `labels[i]` is image i's class -> K lists of indices."""
    pools: list[list[int]] = [[] for _ in range(num_classes)]
    for i, label in enumerate(labels):
        pools[int(label)].append(i)
    return pools


def pick_class_images(classes: Sequence[int], pools: Sequence[Sequence[int]], rng: random.Random) -> list[int]:
    """One image index per class, uniform over the class's pool (the reference's `random.choice`).

    Raises:
        ValueError: a class has no image to draw from.
    """
    picked = []
    for c in classes:
        pool = pools[c]
        if not pool:
            raise ValueError(f"dpc: class {c} has no training image to draw a hard negative from")
        picked.append(rng.choice(pool))
    return picked


def grown_batch_labels(labels: Tensor, negatives: Sequence[Sequence[int]]) -> Tensor:
    """`[y_0, n_00, n_01, ..., y_1, ...]` -> `[N]` class ids of the grown batch."""
    rows = []
    for label, negs in zip(labels.tolist(), negatives):
        rows.append(label)
        rows.extend(negs)
    return torch.tensor(rows, dtype=torch.long, device=labels.device)


def grown_batch_features(batch_feats: Tensor, extra_feats: Tensor, negatives: Sequence[Sequence[int]]) -> Tensor:
    """Interleave batch features `[B, D]` and extra-image features `[E, D]` (negatives in order) into the
    grown batch `[image 0, its negatives, image 1, ...]` -> `[N, D]`."""
    rows, start = [], 0
    for i, negs in enumerate(negatives):
        rows += [batch_feats[i : i + 1], extra_feats[start : start + len(negs)].to(batch_feats.dtype)]
        start += len(negs)
    return torch.cat(rows)


def symmetric_contrastive_loss(image_feats: Tensor, text_feats: Tensor, logit_scale: float) -> Tensor:
    """`(CE(s F G^T, arange) + CE(s G F^T, arange)) / 2` for paired rows `F [N, D]`, `G [N, D]`.

    Both are L2-normalised here (the reference normalises before the product; idempotent on unit rows).
    """
    image = image_feats / image_feats.norm(dim=-1, keepdim=True)
    text = text_feats / text_feats.norm(dim=-1, keepdim=True)
    logits_per_image = logit_scale * image @ text.t()
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.t(), targets)) / 2


def hard_negative_contrastive_loss(
    state: StepState, top_k: int, pools: Sequence[Sequence[int]], rng: random.Random
) -> Tensor:
    """DPC's loss for one step: grow the batch with hard negatives and contrast it (module docstring).

    Reads from `state`: `labels [B]`, `image_feats [B, D]` (the learner's), `text_feats [K, D]`,
    `logit_scale`, `aux["dpc_stage1_text_feats"] [K, D]`, optionally `aux["dpc_stage1_image_feats"]`
    (image-prompting base learners; else the step's own image features, which are the frozen tower's)
    and `encode_training_images(indices) -> [E, D]` for the extra images (indices into `pools`' items).
    """
    if state.text_feats.dim() != 2:
        raise ValueError("dpc: the hard-negative loss needs class text features [K, D], not per-image ones")
    stage1_text = state.aux[STAGE1_TEXT]
    stage1_image = state.aux.get(STAGE1_IMAGE, state.image_feats)
    scores = stage1_class_scores(stage1_image, stage1_text)
    negatives, extra = hard_negative_batch(scores, state.labels, top_k, pools, rng)
    if extra:
        extra_feats = state.encode_training_images(torch.tensor(extra, dtype=torch.long))
    else:
        extra_feats = state.image_feats[:0]
    image = grown_batch_features(state.image_feats, extra_feats, negatives)
    text = state.text_feats[grown_batch_labels(state.labels, negatives)]
    return symmetric_contrastive_loss(image, text, state.logit_scale)


@dataclass
class DPCObjectiveConfig:
    """The Dynamic Hard Negative Optimizer's settings (reference `cfg.SPLE.*`)."""

    top_k: int = 8  # INFER_TOPK: classes ranked by the stage-1 model per image
    # where a hard negative's image comes from: the run's own training items, or every image of the
    # training split in the training label space (as the reference's downloaded list; fills the feature
    # cache for the whole split)
    image_pool: Literal["training_items", "train_split"] = "training_items"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k: expected >= 1, got {self.top_k}")


def build_dpc(cfg: DPCObjectiveConfig, context: ObjectiveContext):
    labels = list(context.training_labels)
    if cfg.image_pool == "train_split":
        labels += context.extra_labels  # indices past the training items, in the same order
    pools = class_image_pools(labels, len(context.classnames))

    def terms(state: StepState) -> dict[str, Tensor]:
        if state.generator is None:
            raise ValueError("dpc: the hard-negative draws need the run's generator (StepState.generator)")
        rng = random.Random(int(torch.randint(2**62, (1,), generator=state.generator)))  # module docstring
        return {"contrastive": hard_negative_contrastive_loss(state, cfg.top_k, pools, rng)}

    return terms


OBJECTIVES.register("dpc", ObjectiveSpec(
    DPCObjectiveConfig, build_dpc, default_weights={"contrastive": 1.0},
    reads=frozenset({"encode_training_images", STAGE1_TEXT, STAGE1_IMAGE}),
))
