"""The one training loop, for every learner and any set of objectives and hooks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tailprompt.data.types import DatasetSplits, Item
from tailprompt.engine.checkpoint import TrainProgress, load_checkpoint, save_checkpoint
from tailprompt.engine.distributed import DistContext
from tailprompt.engine.finite import FiniteGuard
from tailprompt.engine.inputs import ImageInputs
from tailprompt.engine.loss import BoundObjective, objective_terms, scaled_logits
from tailprompt.engine.optim import build_optimizer, lr_at_epoch, set_lr
from tailprompt.engine.run_config import OptimConfig
from tailprompt.hooks import TrainHook
from tailprompt.objectives import StepState
from tailprompt.prompts import PromptLearner

log = logging.getLogger(__name__)


@dataclass
class TrainSetup:
    learner: PromptLearner
    objectives: list[BoundObjective]
    frozen_text: Tensor  # [K, D] normalised
    clusters: Tensor | None  # [K], when an objective needs clusters
    dataset: DatasetSplits  # training label space
    items: list[Item]
    inputs: ImageInputs
    train_views: Tensor | None  # [V, N, D] cached augmented views, None = run the tower per step
    optim: OptimConfig
    seed: int
    hooks: list[TrainHook] = field(default_factory=list)
    descriptions: Tensor | None = None  # [n, K, D] frozen description features, when an objective reads them
    progress: bool = False
    checkpoint: Path | None = None  # where to keep a resumable training checkpoint (None: never)
    extra_items: list[Item] = field(default_factory=list)  # addressed by encode_training_images after `items`
    group: DistContext | None = None  # torchrun's processes: each runs its share of every batch

    @cached_property
    def reads(self) -> frozenset[str]:
        """Every optional `StepState` field (and learner aux output) some objective reads."""
        return frozenset().union(*(o.reads for o in self.objectives))


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Dassl drops the last partial batch only when there is at least one full batch."""
    return max(1, n // batch_size) if n >= batch_size else 1


@dataclass
class EpochInputs:
    """Where one epoch's images come from: cached views, or decoded batches for the exact mode."""

    setup: TrainSetup
    epoch: int
    order: Tensor  # [steps * bs] item indices in batch order
    generator: torch.Generator
    batches: Iterator[Tensor] | None = None  # exact mode: augmented images, batch by batch
    teacher_batches: Iterator[Tensor] | None = None  # exact mode: a second augmentation of the same images

    @classmethod
    def start(cls, setup: TrainSetup, epoch: int, order: Tensor, gen: torch.Generator) -> EpochInputs:
        run = cls(setup, epoch, order, gen)
        if run.exact:
            # Each image augmented with its own seed (run seed, epoch, image), as fresh as the reference's
            # per-step draw, decoded in batch order (in worker processes if any).
            items = [setup.items[i] for i in order.tolist()]
            bs = setup.optim.batch_size
            if setup.group is not None:  # this rank decodes only its share of each batch
                items, bs = setup.group.local_rows(items, min(bs, len(items)))
            run.batches = setup.inputs.image_batches(setup.dataset, items, bs, train_seed=(setup.seed, epoch))
            if "teacher_image_feats" in setup.reads:
                run.teacher_batches = setup.inputs.image_batches(
                    setup.dataset, items, bs, train_seed=(setup.seed, epoch, "teacher")
                )
        return run

    @property
    def exact(self) -> bool:
        return self.setup.train_views is None or self.setup.learner.uses_image_tower

    def cached_view(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(view index per image, its cached features) drawn with the run's generator."""
        views = self.setup.train_views
        assert views is not None
        view = torch.randint(views.shape[0], (len(idx),), generator=self.generator)
        return view, views[view.to(views.device), idx.to(views.device)]

    def teacher_view(self, idx: Tensor, view: Tensor) -> Tensor:
        """Cached features of a view different from `view` for each image (needs >= 2 cached views)."""
        views = self.setup.train_views
        assert views is not None
        if views.shape[0] < 2:
            raise ValueError("an objective reads teacher_image_feats (a second augmented view): set data.n_views >= 2")
        shift = 1 + torch.randint(views.shape[0] - 1, (len(idx),), generator=self.generator)
        other = (view + shift) % views.shape[0]
        return views[other.to(views.device), idx.to(views.device)]

    def encoder_of_training_images(self, step: int) -> Callable[[Tensor], Tensor]:
        """Training-item indices `[N]` -> the learner's image features `[N, D]` of one augmented view each.

        Indices past the training items address `setup.extra_items` (`ObjectiveContext.extra_labels`).
        """
        setup = self.setup
        pool = setup.items + setup.extra_items

        def encode(indices: Tensor) -> Tensor:
            if not self.exact:
                return self.cached_view(indices.cpu())[1]
            items = [pool[i] for i in indices.tolist()]
            seed = (setup.seed, self.epoch, "extra", step)
            images = torch.cat(list(setup.inputs.image_batches(setup.dataset, items, len(items), train_seed=seed)))
            with setup.inputs.backbone.autocast():
                return setup.learner.image_features(images).float()

        return encode


def step_state(run: EpochInputs, idx: Tensor, labels: Tensor, step: int) -> StepState:
    """Forward pass of the learner on one batch, with the optional fields the objectives read."""
    setup, reads = run.setup, run.setup.reads
    learner, inputs = setup.learner, setup.inputs
    scale = float(inputs.backbone.logit_scale)
    images, frozen_img, view = None, None, None
    group, n = setup.group, len(idx)

    def whole(rows: Tensor) -> Tensor:  # exact mode under torchrun: this rank's rows -> the whole batch
        return group.gather(rows, n) if group is not None else rows

    if run.exact:
        assert run.batches is not None
        images = next(run.batches)
        if not learner.uses_image_tower:  # the learner's image features are the frozen tower's
            frozen_img = inputs.backbone.image_features(images)
    else:
        view, frozen_img = run.cached_view(idx)
    mine = frozen_img
    if group is not None and not run.exact and frozen_img is not None:
        mine = frozen_img[slice(*group.share(n))]
    with inputs.backbone.autocast():  # the towers; objectives below in fp32
        img = learner.image_features(images) if learner.uses_image_tower else mine
        assert img is not None
        txt = learner.text_features(img if learner.instance_conditioned else None)
    img, txt = img.float(), txt.float()
    if group is not None:  # every rank gets the whole batch (engine/distributed.py)
        img = group.gather(img, n)
        txt = group.gather(txt, n) if txt.dim() == 3 else group.shared(txt)
        if run.exact and frozen_img is not None:
            frozen_img = group.gather(frozen_img, n)
    state = StepState(
        logits=scaled_logits(img, txt, scale), labels=labels, image_feats=img, text_feats=txt,
        frozen_text_feats=setup.frozen_text, class_ids=torch.arange(setup.dataset.num_classes, device=inputs.device),
        logit_scale=scale, clusters=setup.clusters, item_indices=idx, generator=run.generator,
    )
    if reads & {"frozen_image_feats", "zeroshot_logits"}:
        frozen = frozen_img if frozen_img is not None else whole(inputs.backbone.image_features(images))
        state.frozen_image_feats = frozen.float()
        state.zeroshot_logits = scaled_logits(state.frozen_image_feats, setup.frozen_text, scale)
    if "teacher_image_feats" in reads:
        if run.teacher_batches is not None:
            state.teacher_image_feats = whole(inputs.backbone.image_features(next(run.teacher_batches))).float()
        else:
            assert view is not None
            state.teacher_image_feats = run.teacher_view(idx, view).float()
    if "description_text_feats" in reads:
        assert setup.descriptions is not None
        pick = int(torch.randint(setup.descriptions.shape[0], (1,), generator=run.generator))
        state.description_text_feats = setup.descriptions[pick]
    if "encode_training_images" in reads:
        state.encode_training_images = run.encoder_of_training_images(step)
    if reads & learner.provides:  # aux outputs can cost a tower pass (DPC's stage-1 features)
        state.aux = {k: v for k, v in learner.aux_outputs().items() if k in reads}
    return state


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
        resumed = load_checkpoint(setup.checkpoint, learner, optimizer, gen, setup.hooks)
        if resumed is not None:
            start_epoch, step, curve = resumed.epoch, resumed.step, resumed.curve
            log.info("resuming training at epoch %d from %s", start_epoch, setup.checkpoint)
    for hook in setup.hooks:
        hook.on_train_start(learner, setup.optim.epochs)
    transforms = [(o.objective.transform_gradients, i) for i, o in enumerate(setup.objectives)
                  if o.objective.transform_gradients is not None]
    last_save = time.monotonic()
    guard = FiniteGuard()
    labels_all = torch.tensor([it.label for it in setup.items], device=device)
    n, bs = len(setup.items), setup.optim.batch_size
    steps_per_epoch = batches_per_epoch(n, bs)
    learner.train()
    epochs = range(start_epoch, setup.optim.epochs)
    if setup.optim.max_steps is not None and step >= setup.optim.max_steps:
        epochs = range(0)
    for epoch in tqdm(epochs, desc="train", disable=not setup.progress, leave=False):
        set_lr(optimizer, lr_at_epoch(epoch, setup.optim))
        order = torch.randperm(n, generator=gen)[: steps_per_epoch * bs]  # drop_last when a batch is full
        run = EpochInputs.start(setup, epoch, order, gen)
        sums: dict[str, Tensor] = {}
        for b in range(steps_per_epoch):
            idx = order[b * bs : (b + 1) * bs]
            state = step_state(run, idx, labels_all[idx.to(device)], step)
            loss = objective_terms(setup.objectives, state)
            guard.watch(step, epoch, {"image features": state.image_feats, "text features": state.text_feats,
                                      **loss.logged, "total loss": loss.total})
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward(retain_graph=bool(transforms))
            if setup.group is not None:
                setup.group.all_reduce_gradients(params)
            for transform, i in transforms:
                transform(params, loss.raw[i])
            optimizer.step()
            # Accumulate on device; one host sync per epoch, not per step.
            sums["total"] = sums.get("total", 0) + loss.total.detach()
            for k, v in loss.logged.items():
                sums[k] = sums.get(k, 0) + v
            step += 1
            if setup.optim.max_steps is not None and step >= setup.optim.max_steps:
                break
        guard.check()  # before the checkpoint: a NaN state is never saved
        for k, v in sums.items():
            curve.setdefault(k, []).append(float(v) / (b + 1))
        for hook in setup.hooks:
            hook.on_epoch_end(learner, epoch)
        every = setup.optim.checkpoint_every_s
        writes = setup.group is None or setup.group.is_main  # one writer of the run folder
        if setup.checkpoint is not None and writes and every is not None and time.monotonic() - last_save >= every:
            progress = TrainProgress(epoch + 1, step, curve)
            save_checkpoint(setup.checkpoint, learner, optimizer, gen, progress, setup.hooks)
            last_save = time.monotonic()
        if setup.optim.max_steps is not None and step >= setup.optim.max_steps:
            break
    for hook in setup.hooks:
        hook.on_train_end(learner)
    learner.eval()
    return curve
