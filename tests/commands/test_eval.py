"""`tailprompt eval`: a run's prompts, or a released reference checkpoint (Dassl's model.pth.tar-N)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
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


class _RunsCode:
    """A pickled object whose unpickling would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_real_dassl_checkpoint_loads_without_running_its_pickled_objects(coop_run, data_root, tiny_weights,
                                                                          tmp_path, capsys, monkeypatch):
    """Dassl's `save_model` pickles its warm-up scheduler, whose state holds the successor scheduler and the
    optimiser as objects; the scheduler's class (`dassl.optim.lr_scheduler`) is not importable here."""
    ctx = open_run(coop_run).prompts["ctx"]
    marker = tmp_path / "ran"
    with monkeypatch.context() as m:
        dassl = types.ModuleType("dassl.optim.lr_scheduler")

        class ConstantWarmupScheduler(torch.optim.lr_scheduler.LRScheduler):
            def __init__(self, optimizer, successor):
                self.successor = successor
                super().__init__(optimizer)

            def get_lr(self):
                return [1e-5 for _ in self.base_lrs]

        ConstantWarmupScheduler.__module__ = dassl.__name__
        dassl.ConstantWarmupScheduler = ConstantWarmupScheduler
        for name in ("dassl", "dassl.optim", "dassl.optim.lr_scheduler"):
            m.setitem(sys.modules, name, dassl)
        param = torch.nn.Parameter(ctx.clone())
        optim = torch.optim.SGD([param], lr=0.002, momentum=0.9)
        sched = ConstantWarmupScheduler(optim, torch.optim.lr_scheduler.CosineAnnealingLR(optim, 50))
        path = dassl_checkpoint(tmp_path / "model.pth.tar-50", {"ctx": ctx})
        data = torch.load(path, weights_only=True)
        data |= {"optimizer": optim.state_dict(), "scheduler": sched.state_dict(), "args": _RunsCode(marker)}
        torch.save(data, path)
    argv = ["eval", "--prompts", str(path), "--learner", "coop", "--dataset", "eurosat", "--classes", "new",
            "--root", str(data_root), "--set", "backbone.name=tiny-vit", "--set", f"backbone.weights={tiny_weights}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(argv) == 0
    from_ckpt = _eval_json(capsys)
    assert main(["eval", "--run", str(coop_run), "--dataset", "eurosat", "--classes", "new"]) == 0
    assert from_ckpt["accuracy"] == _eval_json(capsys)["accuracy"]
    assert not marker.exists()


@pytest.mark.parametrize("case, message", [
    ("not_a_dict", "the file holds a pickled argparse.Namespace object"),
    ("truncated", "truncated or not a torch.save checkpoint"),
    ("missing", "prompt checkpoint not found"),
    ("wrong_shape", "shape mismatches"),
    ("no_learner", "--prompts needs --learner"),
    ("stage1_for_coop", "--stage1 is for second-stage learners (dpc); coop has no first stage"),
    ("missing_stage1", "stage1.pth: prompt checkpoint not found"),
])
def test_bad_checkpoints_are_one_line(coop_run, data_root, tmp_path, capsys, case, message):
    ctx = open_run(coop_run).prompts["ctx"]
    path = tmp_path / "model.pth.tar-50"
    if case == "not_a_dict":
        torch.save(argparse.Namespace(lr=0.002), path)  # an object, read as an inert stand-in: not a dict
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
        argv += ["--learner", "dpc" if case == "missing_stage1" else "coop"]
    if case in ("stage1_for_coop", "missing_stage1"):
        argv += ["--stage1", str(path if case == "stage1_for_coop" else tmp_path / "stage1.pth")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("learner", ["coop", "cocoop", "kgcoop", "maple"])
def test_each_reference_learners_checkpoint_format_loads(learner, data_root, tiny_weights, tmp_path, capsys):
    """A Dassl checkpoint of each reference learner (KgCoOp's untrained bias_vectors and token_midfix, MaPLe's
    whole-model `prompt_learner.` keys with the frozen encoders) scores as the same prompts in a plain file."""
    from safetensors.torch import save_file

    from tailprompt.backbone import load_backbone
    from tailprompt.engine.resolve import resolve_config
    from tailprompt.prompts import build_learner

    sets = ["backbone.name=tiny-vit", f"backbone.weights={tiny_weights}", f"data.cache_dir={tmp_path / 'c'}",
            "data.batch_size_eval=64"]
    cfg = resolve_config(None, [f"learner.name={learner}", *sets])
    backbone = load_backbone("tiny-vit", tiny_weights, device="cpu")
    gen = torch.Generator().manual_seed(3)
    fresh = build_learner(learner, cfg.learner.options, backbone, ["a", "b"], "a {}.").prompt_state()
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in fresh.items()}
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(plain))
    reference = {**state, "token_prefix": torch.zeros(2, 1, 64), "token_suffix": torch.zeros(2, 5, 64)}
    if learner == "kgcoop":
        reference |= {"token_midfix": torch.zeros(2, 1, 64), "bias_vectors": torch.zeros(64)}
    if learner == "maple":
        reference = {f"prompt_learner.{k}": v for k, v in reference.items()}
        reference |= {"image_encoder.conv1.weight": torch.zeros(1), "text_encoder.ln_final.weight": torch.zeros(1),
                      "logit_scale": torch.tensor(4.6)}
    ckpt = dassl_checkpoint(tmp_path / "model.pth.tar-5", {"ctx": torch.zeros(1)})  # the optimizer shape only
    data = torch.load(ckpt, weights_only=True)
    data["state_dict"] = reference
    torch.save(data, ckpt)
    scores = []
    for path in (ckpt, plain):
        argv = ["eval", "--prompts", str(path), "--learner", learner, "--dataset", "eurosat", "--root",
                str(data_root), "--classes", "base"] + [a for s in sets for a in ("--set", s)]
        assert main(argv) == 0
        scores.append(_eval_json(capsys))
    assert scores[0]["accuracy"] == scores[1]["accuracy"] and scores[0]["nll"] == pytest.approx(scores[1]["nll"])


def test_a_run_folder_that_cannot_take_the_metrics_is_named_before_evaluating(coop_run, tmp_path, capsys,
                                                                               monkeypatch):
    import shutil

    import tailprompt.engine.saved as saved

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the run was evaluated before its metrics file was checked")

    monkeypatch.setattr(saved, "run_backbone", no_evaluation)
    run = shutil.copytree(coop_run, tmp_path / coop_run.name)
    metrics = run / "eval_eurosat_new.json"
    metrics.unlink(missing_ok=True)
    metrics.mkdir()  # a path the metrics cannot be written to, as a read-only run folder would be
    assert main(["eval", "--run", str(run), "--dataset", "eurosat", "--classes", "new"]) == 2
    err = capsys.readouterr().err
    assert "eval_eurosat_new.json: is a folder" in err and "Traceback" not in err


def test_a_released_checkpoint_gets_its_datasets_row_of_the_presets_table():
    from tailprompt.commands.eval import released_config

    cfg = released_config("coprompt", "coprompt", "caltech101", [])
    assert (cfg.learner.options.prompt_depth, cfg.learner.options.n_ctx) == (12, 4)  # CoPrompt's Caltech101 row
    assert released_config("coprompt", "coprompt", "caltech101", ["learner.n_ctx=2"]).learner.options.n_ctx == 2


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_no_code_runs_from_a_checkpoint_of_either_torch_save_layout(coop_run, tmp_path, layout):
    """torch.load reads the legacy (non-zip) layout's header records with the pickle module's own `load`:
    those go through the inert reader too. The file here calls os.system before its magic number."""
    import io
    import pickle

    from tailprompt.engine.saved import read_prompt_checkpoint

    ctx = open_run(coop_run).prompts["ctx"]
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save({"state_dict": {"ctx": ctx}, "args": _RunsCode(marker)}, buf,
               _use_new_zipfile_serialization=layout == "zip")
    data = buf.getvalue()
    if layout == "legacy":
        header = io.BytesIO(data)
        magic = pickle.load(header)
        command = f"touch {marker}".encode()
        runs = (b"\x80\x02cposix\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R0"
                + pickle.dumps(magic, protocol=2)[2:])  # os.system(...), POP, then the real magic number
        data = runs + data[header.tell():]
    path = tmp_path / "model.pth.tar-5"
    path.write_bytes(data)
    state = read_prompt_checkpoint(path)
    assert torch.equal(state["state_dict"]["ctx"], ctx)
    assert not marker.exists()


def test_a_learner_set_twice_is_refused():
    from tailprompt.cli import UserError
    from tailprompt.commands.eval import released_config

    with pytest.raises(UserError, match="--set learner.name=kgcoop contradicts --learner coop"):
        released_config(None, "coop", "eurosat", ["learner.name=kgcoop"])


def test_a_checkpoint_cannot_set_attributes_of_a_class(tmp_path):
    """BUILD on a class (here torch.Tensor, from the allow-list) would monkeypatch it for the whole process."""
    import io
    import pickle

    from tailprompt.engine.saved import read_prompt_checkpoint
    from tailprompt.files import FileReadError

    buf = io.BytesIO()
    torch.save({}, buf, _use_new_zipfile_serialization=False)
    data = io.BytesIO(buf.getvalue())
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(data)
    start = data.tell()
    pickle.load(data)  # the saved object, replaced below
    sets_attribute = b"\x80\x02ctorch\nTensor\nN}X\x03\x00\x00\x00fooK\x01s\x86b."  # setattr(torch.Tensor, "foo", 1)
    path = tmp_path / "model.pth.tar-1"
    path.write_bytes(buf.getvalue()[:start] + sets_attribute + buf.getvalue()[data.tell():])
    with pytest.raises(FileReadError, match="sets attributes of a class or function"):
        read_prompt_checkpoint(path)
    assert not hasattr(torch.Tensor, "foo")
