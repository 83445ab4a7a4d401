"""A damaged training checkpoint is discarded with a warning naming it, and nothing is half restored."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tailprompt.engine.checkpoint import TrainProgress, load_checkpoint, save_checkpoint


def trained_state(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    torch.manual_seed(seed)
    learner = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9)
    learner(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return learner, optimizer, torch.Generator().manual_seed(seed)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    learner, optimizer, gen = trained_state(1)
    save_checkpoint(path, learner, optimizer, gen, TrainProgress(3, 30, {"total": [1.0, 0.5, 0.25]}))
    return path


def rewrite(path, tensors=None, **meta_changes) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta, stored = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    save_file(tensors(stored) if tensors else stored, str(path), metadata=meta)


DAMAGE = {
    "epoch a string": dict(progress=json.dumps({"epoch": "x", "step": 3, "curve": {}})),
    "epoch missing": dict(progress=json.dumps({"step": 3, "curve": {}})),
    "progress not JSON": dict(progress="{epoch: 1"),
    "progress a list": dict(progress="[1, 2]"),
    "curve of strings": dict(progress=json.dumps({"epoch": 1, "step": 3, "curve": {"total": ["a"]}})),
    "optimiser scalars missing": dict(optim_scalars=None),
    "optimiser groups garbage": dict(optim_groups="[]"),
    "optimiser index not a number": dict(optim_scalars=json.dumps({"x": {}})),
    "generator state missing": dict(tensors=lambda t: {k: v for k, v in t.items() if k != "rng"}),
    "generator state of floats": dict(tensors=lambda t: {**t, "rng": t["rng"].float()}),
    "NaN parameters": dict(tensors=lambda t: {**t, "param/weight": torch.full_like(t["param/weight"], float("nan"))}),
    "other parameters": dict(tensors=lambda t: {k: v for k, v in t.items() if k != "param/bias"}),
    "another format": dict(format="something-else"),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_checkpoint_is_discarded_and_the_fresh_state_kept(checkpoint, damage, caplog):
    rewrite(checkpoint, **DAMAGE[damage])
    learner, optimizer, gen = trained_state(2)
    params = [p.detach().clone() for p in learner.parameters()]
    optim_state = json.dumps({k: v for k, v in optimizer.state_dict().items() if k != "state"})
    buffers = [s["momentum_buffer"].clone() for s in optimizer.state.values()]
    rng = gen.get_state()
    with caplog.at_level(logging.WARNING, logger="tailprompt.engine.checkpoint"):
        assert load_checkpoint(checkpoint, learner, optimizer, gen) is None
    (record,) = caplog.records
    assert str(checkpoint) in record.getMessage() and "discarded" in record.getMessage()
    assert all(torch.equal(a, b) for a, b in zip(params, learner.parameters()))
    assert json.dumps({k: v for k, v in optimizer.state_dict().items() if k != "state"}) == optim_state
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(buffers, optimizer.state.values()))
    assert torch.equal(gen.get_state(), rng)


def test_an_intact_checkpoint_restores_everything(checkpoint):
    want_learner, want_optimizer, want_gen = trained_state(1)
    learner, optimizer, gen = trained_state(2)
    progress = load_checkpoint(checkpoint, learner, optimizer, gen)
    assert progress == TrainProgress(3, 30, {"total": [1.0, 0.5, 0.25]})
    assert all(torch.equal(a, b) for a, b in zip(want_learner.parameters(), learner.parameters()))
    assert torch.equal(gen.get_state(), want_gen.get_state())
    want = [s["momentum_buffer"] for s in want_optimizer.state.values()]
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(want, optimizer.state.values()))
