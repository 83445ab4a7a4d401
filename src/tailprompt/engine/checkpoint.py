"""Mid-run training checkpoints, so that a killed run resumes at the epoch where it stopped.

A checkpoint holds what the rest of training depends on: the prompt parameters, the optimiser state,
the sampler's generator state, the training hooks' state, the epoch and step counters and the loss curve
so far. Resuming from it
gives the same result as an uninterrupted run (the per-image augmentation seeds depend on the epoch,
not on the process). Stored as safetensors (tensors) + JSON metadata, written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tailprompt.utils import atomic_path

if TYPE_CHECKING:
    from tailprompt.hooks import TrainHook

log = logging.getLogger(__name__)

FORMAT = "tailprompt-train-checkpoint-1"


@dataclass
class TrainProgress:
    epoch: int  # the next epoch to run
    step: int
    curve: dict[str, list[float]]


def save_checkpoint(
    path: Path, learner: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator, progress: TrainProgress,
    hooks: Sequence[TrainHook] = (),
) -> None:
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in learner.named_parameters() if p.requires_grad}
    for i, hook in enumerate(hooks):
        tensors.update({f"hook/{i}/{k}": v.detach().cpu().contiguous() for k, v in hook.state_dict().items()})
    opt = optimizer.state_dict()
    state_meta: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        state_meta[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                state_meta[str(idx)][key] = value
    tensors["rng"] = gen.get_state()
    meta = {
        "format": FORMAT,
        "progress": json.dumps({"epoch": progress.epoch, "step": progress.step, "curve": progress.curve}),
        "optim_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(state_meta),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(
    path: Path, learner: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator,
    hooks: Sequence[TrainHook] = (),
) -> TrainProgress | None:
    """Restore a checkpoint into the learner, optimiser and generator; None if there is none (or it is stale)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a damaged checkpoint: start over rather than fail the run
        log.warning("%s: unreadable training checkpoint discarded, training starts over (%s)", path,
                    " ".join(str(e).split())[:160])
        return None
    if meta.get("format") != FORMAT:
        log.warning("%s: checkpoint of another format (%r, expected %r) discarded, training starts over",
                    path, meta.get("format"), FORMAT)
        return None
    params = {n: p for n, p in learner.named_parameters() if p.requires_grad}
    saved = {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")}
    if set(saved) != set(params) or any(saved[n].shape != p.shape for n, p in params.items()):
        log.warning("%s: checkpoint's prompt parameters do not match this learner's; discarded, training "
                    "starts over", path)
        return None
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n].to(p.device, p.dtype))
    device = next(iter(params.values())).device
    state: dict[int, dict[str, Any]] = {}
    for idx, scalars in json.loads(meta["optim_scalars"]).items():
        state[int(idx)] = dict(scalars)
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value.to(device) if value.dim() > 0 else value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["optim_groups"])})
    gen.set_state(tensors["rng"])
    for i, hook in enumerate(hooks):
        prefix = f"hook/{i}/"
        hook.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    progress = json.loads(meta["progress"])
    return TrainProgress(progress["epoch"], progress["step"], progress["curve"])
