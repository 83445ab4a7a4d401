"""`tailprompt eval`: a run's prompts, or a released reference checkpoint (Dassl's model.pth.tar-N)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from tailprompt.cli import main
from tailprompt.engine.saved import open_run


def _eval_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def dassl_checkpoint(path: Path, state: dict, extra: object = None) -> Path:
    """What Dassl's save_checkpoint writes: torch.save of a dict with the prompt learner's state_dict
    (the frozen token_prefix / token_suffix buffers included), the epoch, optimizer and scheduler state."""
    prefix, suffix = torch.randn(5, 1, 64), torch.randn(5, 60, 64)
    ckpt = {
        "state_dict": {**state, "token_prefix": prefix, "token_suffix": suffix},
        "epoch": 50,
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros_like(state["ctx"])}},
                      "param_groups": [{"lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "params": [0]}]},
        "scheduler": {"T_max": 50, "last_epoch": 50, "base_lrs": [0.002]},
        "val_result": None,
    }
    if extra is not None:
        ckpt["args"] = extra
    torch.save(ckpt, path)
    return path


def test_a_reference_checkpoint_scores_like_the_run_it_came_from(coop_run, data_root, tiny_weights, tmp_path,
                                                                   capsys):
    saved = open_run(coop_run)
    ckpt = dassl_checkpoint(tmp_path / "model.pth.tar-50", {"ctx": saved.prompts["ctx"]})
    assert main(["eval", "--run", str(coop_run), "--dataset", "eurosat", "--classes", "new"]) == 0
    from_run = _eval_json(capsys)
    out = tmp_path / "ref.json"
    argv = ["eval", "--prompts", str(ckpt), "--learner", "coop", "--dataset", "eurosat", "--classes", "new",
            "--root", str(data_root), "--set", "backbone.name=tiny-vit", "--set", f"backbone.weights={tiny_weights}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)]
    assert main(argv) == 0
    from_ckpt = _eval_json(capsys)
    assert from_ckpt["accuracy"] == from_run["accuracy"] and from_ckpt["ece"] == pytest.approx(from_run["ece"])
    assert json.loads(out.read_text())["per_class_accuracy"]


@pytest.mark.parametrize("case, message", [
    ("pickled_object", "holds Python objects beyond tensors"),
    ("truncated", "truncated or not a torch.save checkpoint"),
    ("missing", "prompt checkpoint not found"),
    ("wrong_shape", "shape mismatches"),
    ("no_learner", "--prompts needs --learner"),
])
def test_bad_checkpoints_are_one_line(coop_run, data_root, tmp_path, capsys, case, message):
    ctx = open_run(coop_run).prompts["ctx"]
    path = tmp_path / "model.pth.tar-50"
    if case == "pickled_object":
        dassl_checkpoint(path, {"ctx": ctx}, extra=argparse.Namespace(lr=0.002))
    elif case == "truncated":
        data = dassl_checkpoint(path, {"ctx": ctx}).read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "wrong_shape":
        dassl_checkpoint(path, {"ctx": torch.randn(16, ctx.shape[1])})
    elif case != "missing":
        dassl_checkpoint(path, {"ctx": ctx})
    argv = ["eval", "--prompts", str(path), "--dataset", "eurosat", "--root", str(data_root),
            "--set", "backbone.name=tiny-vit"]
    if case != "no_learner":
        argv += ["--learner", "coop"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
