"""The one training loop, for every learner and any set of objectives."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tailprompt.data.types import DatasetSplits, Item
from tailprompt.engine.checkpoint import TrainProgress, load_checkpoint, save_checkpoint
from tailprompt.engine.config import OptimConfig
from tailprompt.engine.distributed import DistContext
from tailprompt.engine.inputs import ImageInputs
from tailprompt.engine.optim import build_optimizer, lr_at_epoch, set_lr
from tailprompt.engine.steps import (
    BoundObjective,
    autocast_for,
    learner_outputs,
    normalized,
    objective_terms,
    scaled_logits,
)
from tailprompt.objectives import StepState
from tailprompt.prompts import LearnerSpec

log = logging.getLogger(__name__)


@dataclass
class TrainSetup:
    learner: nn.Module
    spec: LearnerSpec
    objectives: list[BoundObjective]
    frozen_text: Tensor  # [K, D] normalised
    clusters: Tensor | None  # [K]
    dataset: DatasetSplits  # training label space
    items: list[Item]
    inputs: ImageInputs
    train_views: Tensor | None  # [V, N, D] cached augmented views, None = run the tower per step
    optim: OptimConfig
    seed: int
    progress: bool = False
    checkpoint: Path | None = None  # where to keep a resumable training checkpoint (None: never)
    group: DistContext | None = None  # torchrun's process group: each rank runs a share of every batch


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Dassl drops the last partial batch only when there is at least one full batch."""
    return max(1, n // batch_size) if n >= batch_size else 1


def train_prompts(setup: TrainSetup) -> dict[str, list[float]]:
    """Train the learner's prompts; returns per-epoch means of the total and of every term."""
    learner, inputs = setup.learner, setup.inputs
    device = inputs.device
    params = [p for p in learner.parameters() if p.requires_grad]
    curve: dict[str, list[float]] = {"total": []}
    if not params or setup.optim.epochs <= 0:
        return curve  # zero-shot: nothing to train
    optimizer = build_optimizer(params, setup.optim)
    gen = torch.Generator().manual_seed(setup.seed)
    start_epoch, step = 0, 0
    if setup.checkpoint is not None:
        resumed = load_checkpoint(setup.checkpoint, learner, optimizer, gen)
        if resumed is not None:
            start_epoch, step, curve = resumed.epoch, resumed.step, resumed.curve
            log.info("resuming training at epoch %d from %s", start_epoch, setup.checkpoint)
    last_save = time.monotonic()
    labels_all = torch.tensor([it.label for it in setup.items], device=device)
    n, bs = len(setup.items), setup.optim.batch_size
    steps_per_epoch = batches_per_epoch(n, bs)
    class_ids = torch.arange(setup.dataset.num_classes, device=device)
    scale = float(inputs.backbone.logit_scale)
    exact = setup.train_views is None or setup.spec.uses_image_tower  # run the image tower every step
    group = setup.group
    learner.train()
    epochs = range(start_epoch, setup.optim.epochs)
    if setup.optim.max_steps is not None and step >= setup.optim.max_steps:
        epochs = range(0)
    for epoch in tqdm(epochs, desc="train", disable=not setup.progress, leave=False):
        set_lr(optimizer, lr_at_epoch(epoch, setup.optim))
        order = torch.randperm(n, generator=gen)[: steps_per_epoch * bs]  # drop_last when a batch is full
        # Exact mode: the epoch's images are decoded (in worker processes if any) in batch order, each
        # augmented with its own seed (run seed, epoch, image), as fresh as the reference's per-step draw.
        batch_items, batch_len = [setup.items[i] for i in order.tolist()], min(bs, len(order))
        if group is not None:  # this rank decodes only its share of each batch
            start, end = group.share(batch_len)
            batch_items = [it for b in range(steps_per_epoch)
                           for it in batch_items[b * batch_len + start : b * batch_len + end]]
            batch_len = end - start
        image_iter = inputs.image_batches(
            setup.dataset, batch_items, batch_len, train_seed=(setup.seed, epoch)
        ) if exact else None
        sums: dict[str, Tensor] = {}
        for b in range(steps_per_epoch):
            idx = order[b * bs : (b + 1) * bs]
            labels = labels_all[idx.to(device)]
            images = None
            if image_iter is None:
                view = torch.randint(setup.train_views.shape[0], (len(idx),), generator=gen)
                frozen_img = setup.train_views[view.to(device), idx.to(device)]
            else:
                images = next(image_iter)
                with torch.no_grad(), autocast_for(device):
                    frozen_img = normalized(inputs.backbone.encode_image(images))
            if group is not None and image_iter is None:
                frozen_img = frozen_img[slice(*group.share(len(idx)))]
            with autocast_for(device):  # the towers in bf16 on CUDA; objectives below in fp32
                img, txt = learner_outputs(learner, setup.spec, frozen_img, images)
            img, txt, frozen_img = img.float(), txt.float(), frozen_img.float()
            if group is not None:  # every rank gets the whole batch (see engine/distributed.py)
                img, frozen_img = group.gather(img, len(idx)), group.gather(frozen_img, len(idx))
                txt = group.gather(txt, len(idx)) if txt.dim() == 3 else group.shared(txt)
            state = StepState(
                logits=scaled_logits(img, txt, scale),
                labels=labels,
                image_feats=img,
                text_feats=txt,
                frozen_text_feats=setup.frozen_text,
                frozen_image_feats=frozen_img,
                zeroshot_logits=scaled_logits(frozen_img, setup.frozen_text, scale),
                class_ids=class_ids,
                logit_scale=scale,
                clusters=setup.clusters,
            )
            loss, terms = objective_terms(setup.objectives, state)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if group is not None:
                group.all_reduce_gradients(params)
            optimizer.step()
            # Accumulate on device; one host sync per epoch, not per step.
            sums["total"] = sums.get("total", 0) + loss.detach()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v
            step += 1
            if setup.optim.max_steps is not None and step >= setup.optim.max_steps:
                break
        for k, v in sums.items():
            curve.setdefault(k, []).append(float(v) / (b + 1))
        every = setup.optim.checkpoint_every_s
        writes = group is None or group.is_main
        if setup.checkpoint is not None and writes and every is not None and time.monotonic() - last_save >= every:
            save_checkpoint(setup.checkpoint, learner, optimizer, gen, TrainProgress(epoch + 1, step, curve))
            last_save = time.monotonic()
        if setup.optim.max_steps is not None and step >= setup.optim.max_steps:
            break
    learner.eval()
    return curve
