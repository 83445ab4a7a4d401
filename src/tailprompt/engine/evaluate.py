"""The one evaluation routine: logits of a split, text features computed once per evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tailprompt.data.types import DatasetSplits, Item
from tailprompt.engine.inputs import ImageInputs
from tailprompt.engine.loss import scaled_logits
from tailprompt.prompts import PromptLearner
from tailprompt.prompts.common import image_chunks
from tailprompt.tensors import unit

# Text sequences per evaluation chunk of an instance-conditioned learner (B*K prompts): bounds memory.
EVAL_SEQUENCES_PER_CHUNK = 4096


@dataclass
class SplitOutputs:
    logits: Tensor  # [N, K] scaled
    labels: Tensor  # [N]
    image_feats: Tensor  # [N, D] the learner's image features (normalised)
    text_feats: Tensor  # [K, D] class features (for instance-conditioned learners: mean over images)


@torch.no_grad()
def split_outputs(
    learner: PromptLearner, dataset: DatasetSplits, items: Sequence[Item], inputs: ImageInputs
) -> SplitOutputs:
    """Logits of `items` against the learner's current label space."""
    learner.eval()
    device = inputs.device
    scale = float(inputs.backbone.logit_scale)
    labels = torch.tensor([it.label for it in items], device=device, dtype=torch.long)
    with inputs.backbone.autocast():
        text = None if learner.instance_conditioned else learner.text_features(None).float()
    if learner.uses_image_tower:
        chunks = []
        batches = inputs.image_batches(dataset, items, inputs.batch_size)
        # a visible bar (on a terminal only): a prompted image tower over a test split takes minutes on a CPU
        for images in tqdm(batches, desc=f"eval {dataset.name}", unit="batch", leave=False, disable=None,
                           total=-(-len(items) // inputs.batch_size)):
            with inputs.backbone.autocast():
                chunks.append(learner.image_features(images).float())
        image_feats = torch.cat(chunks) if chunks else torch.zeros(0, inputs.backbone.embed_dim, device=device)
    else:
        image_feats = inputs.features(dataset, items, view=0)
    if text is not None:
        return SplitOutputs(scaled_logits(image_feats, text, scale), labels, image_feats, text)
    # Instance-conditioned (CoCoOp): text per image, in chunks so B*K prompts stay bounded.
    k = dataset.num_classes
    logits, text_sum = [], 0
    chunks = list(image_chunks(len(items), k, EVAL_SEQUENCES_PER_CHUNK))
    for chunk in tqdm(chunks, desc=f"eval {dataset.name}", unit="chunk", leave=False, disable=None):
        img = image_feats[chunk]
        with inputs.backbone.autocast():
            txt = learner.text_features(img).float()  # [b, K, D]
        logits.append(scaled_logits(img, txt, scale))
        text_sum = text_sum + txt.sum(0)
    mean_text = unit(text_sum) if len(items) else torch.zeros(k, inputs.backbone.embed_dim)
    return SplitOutputs(torch.cat(logits), labels, image_feats, mean_text)
