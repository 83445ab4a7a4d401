"""Mid-run training checkpoints, so that a killed run resumes at the epoch where it stopped.

A checkpoint holds what the rest of training depends on: the prompt parameters, the optimiser state,
the sampler's generator state, the training hooks' state, the epoch and step counters and the loss curve
so far. Resuming from it
gives the same result as an uninterrupted run (the per-image augmentation seeds depend on the epoch,
not on the process). Stored as safetensors (tensors) + JSON metadata, written atomically.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from tailprompt.utils import write_safetensors_atomic

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
    write_safetensors_atomic(path, tensors, meta, "training checkpoint")


class _Discarded(Exception):
    """The checkpoint cannot resume this run; the message says why."""


def load_checkpoint(
    path: Path, learner: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator,
    hooks: Sequence[TrainHook] = (),
) -> TrainProgress | None:
    """Restore a checkpoint into the learner, optimiser, generator and hooks; None if there is none.

    A checkpoint that cannot resume this run (unreadable, another format or learner, damaged anywhere in its
    tensors or metadata, non-finite parameters) is discarded with a warning naming it, and training starts
    over from the state it had before the attempt: a half-restored optimiser or generator is put back.
    """
    if not path.is_file():
        return None
    before = _snapshot(learner, optimizer, gen, hooks)
    try:
        return _restore(path, learner, optimizer, gen, hooks)
    except _Discarded as e:
        why = str(e)
    except Exception as e:  # damage past the header (a key, a type, a shape): start over rather than fail the run
        why = f"damaged ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
    _put_back(before, learner, optimizer, gen, hooks)
    log.warning("%s: training checkpoint discarded (%s), training starts over", path, why)
    return None


def _restore(
    path: Path, learner: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator,
    hooks: Sequence[TrainHook],
) -> TrainProgress:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types, not importable under stable names
        raise _Discarded(f"unreadable ({' '.join(str(e).split())[:160]})") from None
    if meta.get("format") != FORMAT:
        raise _Discarded(f"another format ({meta.get('format')!r}, expected {FORMAT!r})")
    params = {n: p for n, p in learner.named_parameters() if p.requires_grad}
    saved = {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")}
    if set(saved) != set(params) or any(saved[n].shape != p.shape for n, p in params.items()):
        raise _Discarded("other prompt parameters than this learner's")
    if not all(bool(torch.isfinite(v).all()) for v in saved.values() if v.is_floating_point()):
        raise _Discarded("NaN or infinite prompt parameters")
    progress = _progress(json.loads(meta["progress"]))
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
    return progress


def _progress(data: Any) -> TrainProgress:
    """The counters and curve of a checkpoint's ``progress`` metadata, checked (epoch and step are counts)."""
    if not isinstance(data, dict):
        raise _Discarded(f"progress is {type(data).__name__}, expected an object")
    epoch, step, curve = data.get("epoch"), data.get("step"), data.get("curve")
    counts = (epoch, step)
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise _Discarded(f"progress epoch/step {epoch!r}/{step!r}, expected counts >= 0")
    curve_ok = isinstance(curve, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
        for k, v in curve.items()
    )
    if not curve_ok:
        raise _Discarded("progress curve is not an object of number lists")
    return TrainProgress(epoch, step, curve)


@dataclass
class _Snapshot:
    params: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: Tensor
    hooks: list[dict[str, Tensor]]


def _snapshot(learner: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator,
              hooks: Sequence[TrainHook]) -> _Snapshot:
    params = {n: p.detach().clone() for n, p in learner.named_parameters() if p.requires_grad}
    hook_states = [{k: v.clone() for k, v in h.state_dict().items()} for h in hooks]
    return _Snapshot(params, copy.deepcopy(optimizer.state_dict()), gen.get_state(), hook_states)


def _put_back(snap: _Snapshot, learner: nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator,
              hooks: Sequence[TrainHook]) -> None:
    with torch.no_grad():
        for n, p in learner.named_parameters():
            if n in snap.params:
                p.copy_(snap.params[n])
    optimizer.load_state_dict(snap.optimizer)
    gen.set_state(snap.rng)
    for hook, state in zip(hooks, snap.hooks):
        hook.load_state_dict(state)
