"""Data-parallel training over processes started by `torchrun` (one per GPU, or gloo on CPU).

How a step is split: every rank draws the same global batch (same sampler generator), takes its contiguous
share of it (`torch.tensor_split`), runs the expensive per-image work on that share only (the image tower
in exact mode, a prompted image tower for MaPLe, CoCoOp's per-image text features), then all-gathers the
per-image outputs. Every rank then holds the whole batch's StepState and computes the same objectives on
it, so batch statistics (CPT's per-class centres, TCPT's margin variance, ...) are those of the global
batch. Gradients come back to the parameters along two kinds of paths: through a rank's own per-image
rows (the gather's backward keeps the local rows' gradient) and through the class text features that
every rank computed identically (their gradient is scaled by 1/N). The SUM all-reduce of the parameter
gradients is then exactly the one-process gradient of the global batch, and every rank applies the same
optimizer step. Global batch, learning rate and per-image augmentation seeds do not depend on N.

What stays identical to one process and what does not (tests/engine/test_distributed.py):
* training from cached features: bit-identical (the gathered rows are the cached rows; g/2 + g/2 = g);
* running a tower on a share of the batch (exact mode, MaPLe, CoCoOp): the same computation on smaller
  batches, which may round differently in the last bits (BLAS blocking); results agree to float error.

Only rank 0 writes run files and evaluates; the other ranks leave once training is done. The feature
cache fill is sharded: each rank encodes its share of the missing images, then all read the shards.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from tailprompt.schema import ConfigError

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def share(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's rows of a batch of n (contiguous, sizes differ by at most one)."""
        sizes = shard_sizes(n, self.world_size)
        start = sum(sizes[: self.rank])
        return start, start + sizes[self.rank]

    def local_rows(self, rows: list[Any], batch: int) -> tuple[list[Any], int]:
        """This rank's share of each consecutive batch of `batch` rows, and the share's size."""
        start, end = self.share(batch)
        mine = [r for b in range(0, len(rows), batch) for r in rows[b + start : b + end]]
        return mine, end - start

    def gather(self, local: Tensor, n: int) -> Tensor:
        """All ranks' rows of a batch of n in rank order -> [n, ...]; the gradient of this rank's rows flows back."""
        return _GatherRows.apply(local, self, n)

    def shared(self, x: Tensor) -> Tensor:
        """Mark a tensor every rank computed identically: its gradient is counted once after the SUM reduce."""
        return _ScaleGrad.apply(x, 1.0 / self.world_size)

    def all_reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective per step
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def shard_sizes(n: int, world: int) -> list[int]:
    return [len(c) for c in torch.tensor_split(torch.arange(n), world)]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, local: Tensor, group: DistContext, n: int) -> Tensor:
        sizes = shard_sizes(n, group.world_size)
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.bounds = group.share(n)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        # Every rank computed the same loss from the same gathered batch, so the gradient of this rank's
        # rows is already complete here; no communication is needed.
        start, end = ctx.bounds
        return grad[start:end], None, None


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def init_from_env() -> DistContext | None:
    """Join the process group torchrun set up (None when not under torchrun with more than one process)."""
    if not launched_by_torchrun():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        # Rank 0 evaluates alone after training while the others wait at no collective; the timeout only
        # bounds waits inside training (a cache fill shard, a step).
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=2))
    if rank > 0:  # one copy of each log line
        logging.getLogger().setLevel(logging.WARNING)
    return DistContext(rank, world, local_rank)


def threads_per_rank(free: int) -> int:
    """Torch threads for one of the processes torchrun started on this machine."""
    return max(1, free // int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))


def check_distributable(objectives: list[Any], batch: int, group: DistContext) -> None:
    """A clear error, before anything is written, for what this data-parallel split cannot do exactly.

    `objectives`: the run's `BoundObjective`s (name, objective.transform_gradients, reads).
    """
    from tailprompt.objectives import StepState

    fields = {f.name for f in dataclasses.fields(StepState)}
    for obj in objectives:
        built = getattr(obj, "objective", obj)
        if getattr(built, "transform_gradients", None) is not None:
            raise ConfigError(f"objective {obj.name!r} rewrites gradients from per-term gradients, which a "
                              "data-parallel step cannot reproduce; run it in one process (without torchrun)")
        reads = set(getattr(obj, "reads", ()))
        if "encode_training_images" in reads:
            raise ConfigError(f"objective {obj.name!r} encodes extra training images inside the loss, which "
                              "every rank would count again; run it in one process (without torchrun)")
        if reads - fields:
            raise ConfigError(f"objective {obj.name!r} reads the learner's outputs {sorted(reads - fields)}, "
                              "which are not split over ranks; run it in one process (without torchrun)")
    if batch < group.world_size:
        raise ConfigError(f"optim.batch_size: a global batch of {batch} images cannot be split over "
                          f"{group.world_size} processes; use at least {group.world_size} or fewer processes")


def finish(group: DistContext | None) -> None:
    if group is not None and dist.is_initialized():
        dist.destroy_process_group()
