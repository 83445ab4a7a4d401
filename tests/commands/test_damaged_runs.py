"""Bad input to the commands that read a finished run or a prompt file, by class: each is one line naming the
file (and the field), exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from tailprompt.cli import main

COMMANDS = ("predict", "export", "inspect", "eval")


def _argv(command: str, run: Path, tmp_path: Path) -> list[str]:
    if command == "predict":
        image = tmp_path / "img.png"
        Image.new("RGB", (24, 24), (90, 140, 30)).save(image)
        return ["predict", "--run", str(run), str(image)]
    if command == "export":
        return ["export", "--run", str(run), "--out", str(tmp_path / "out" / "export.safetensors")]
    if command == "eval":
        return ["eval", "--run", str(run), "--dataset", "eurosat"]
    return ["inspect", "--run", str(run)]


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _copy(coop_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(coop_run, run, ignore=shutil.ignore_patterns("eval_*.json"))  # other tests' evaluations
    return run


def _edit_result(run: Path, edit) -> None:
    result = json.loads((run / "result.json").read_text())
    edit(result)
    (run / "result.json").write_text(json.dumps(result))


def _training_split(result: dict) -> str:
    return next(name for name, role in result["split_roles"].items() if role.get("training"))


RESULT_DAMAGE = {
    "splits a list": (lambda r: r.update(splits=[1]), "field 'splits' should map split names"),
    "splits missing": (lambda r: r.pop("splits"), "field 'splits' should map split names"),
    "a split a string": (lambda r: r["splits"].update({_training_split(r): "x"}), "should be an object of metrics"),
    "split_roles a list": (lambda r: r.update(split_roles=[1]), "field 'split_roles' should map split names"),
    "class names mixed types": (lambda r: r["splits"][_training_split(r)].update(classnames=[1, None, "x"]),
                                "classnames should be a list of class names"),
    "class names a string": (lambda r: r["splits"][_training_split(r)].update(classnames="forest"),
                             "classnames should be a list of class names"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", list(RESULT_DAMAGE))
def test_a_result_json_of_the_wrong_shape_names_the_file_and_field(coop_run, tmp_path, capsys, command, damage):
    edit, message = RESULT_DAMAGE[damage]
    run = _copy(coop_run, tmp_path)
    _edit_result(run, edit)
    assert main(_argv(command, run, tmp_path)) == 2
    line = _error_line(capsys)
    assert str(run / "result.json") in line and message in line
    assert not (tmp_path / "out").exists() and not list(run.glob("eval_*.json"))


def _prompts(run: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(run / "prompts.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


PROMPT_DAMAGE = {
    "NaN values": (lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()}, "NaN or infinite"),
    "integer values": (lambda t: {k: v.to(torch.int64) for k, v in t.items()}, "holds int64 values"),
    "boolean values": (lambda t: {k: v.bool() for k, v in t.items()}, "holds bool values"),
    "a missing key": (lambda t: {"other": torch.zeros(2)}, "missing keys ['ctx']"),
    "a misshapen tensor": (lambda t: {k: torch.zeros(3, 7) for k in t}, "shape mismatches"),
    "no dimensions": (lambda t: {k: torch.tensor(1.0) for k in t}, "checkpoint [] vs learner"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", list(PROMPT_DAMAGE))
def test_prompt_tensors_that_do_not_fit_name_the_prompts_file(coop_run, tmp_path, capsys, command, damage):
    make, message = PROMPT_DAMAGE[damage]
    run = _copy(coop_run, tmp_path)
    tensors, meta = _prompts(run)
    save_file(make(tensors), str(run / "prompts.safetensors"), metadata=meta)
    assert main(_argv(command, run, tmp_path)) == 2
    line = _error_line(capsys)
    assert str(run / "prompts.safetensors") in line and message in line
    assert not (tmp_path / "out").exists()


CONFIG_DAMAGE = {
    "an unknown key": (lambda c: c["optim"].update(nosuch=1), "config.yaml: unknown key optim.'nosuch'"),
    "a wrong type": (lambda c: c["optim"].update(lr="abc"), "config.yaml: optim.lr: expected a number"),
    "another learner": (lambda c: c.update(learner={"name": "cocoop"}), "prompts.safetensors: cocoop: load_prompt"),
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_a_run_folder_of_another_config_names_the_file(coop_run, tmp_path, capsys, damage):
    """config.yaml edited consistently with the config recorded in result.json (a folder from another run)."""
    edit, message = CONFIG_DAMAGE[damage]
    run = _copy(coop_run, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    edit(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _edit_result(run, lambda r: r.update(config=config))
    assert main(_argv("export", run, tmp_path)) == 2
    line = _error_line(capsys)
    assert str(run) in line and message in line


def _dassl(path: Path, state) -> Path:
    torch.save({"state_dict": state, "epoch": 5}, path)
    return path


def _plain_pickle(path: Path, ctx) -> Path:
    path.write_bytes(pickle.dumps({"ctx": ctx.numpy()}, protocol=4))
    return path


def _bytes(data: bytes):
    def make(path: Path, ctx) -> Path:
        path.write_bytes(data)
        return path

    return make


def _with_object(path: Path, ctx) -> Path:
    torch.save({"state_dict": argparse.Namespace(ctx=ctx)}, path)  # read as an inert stand-in, not run
    return path


def _folder(path: Path, ctx) -> Path:
    path.mkdir()
    return path


PROMPT_FILES = {
    "a text file": (_bytes(b"hello"), "truncated or not a torch.save checkpoint"),
    "random bytes": (_bytes(bytes(range(256)) * 4), "not a torch.save checkpoint"),
    "an empty file": (_bytes(b""), "(empty or cut short)"),
    "a plain pickle": (_plain_pickle, "not a torch.save checkpoint of tensors"),
    "a pickled object": (_with_object, "state_dict holds a pickled argparse.Namespace object"),
    "a pickled value": (lambda p, ctx: _dassl(p, {"ctx": argparse.Namespace()}), "ctx is a Namespace, expected a"),
    "integer keys": (lambda p, ctx: _dassl(p, {1: ctx}), "keys must be parameter names (strings), got [1]"),
    "a string value": (lambda p, ctx: _dassl(p, {"ctx": "text"}), "ctx is a str, expected a tensor"),
    "a null value": (lambda p, ctx: _dassl(p, {"ctx": None}), "ctx is a NoneType, expected a tensor"),
    "a null state dict": (lambda p, ctx: _dassl(p, None), "state_dict is None, expected a dict of tensors"),
    "a nested dict value": (lambda p, ctx: _dassl(p, {"ctx": {"a": ctx}}), "ctx is a dict, expected a tensor"),
    "infinite values": (lambda p, ctx: _dassl(p, {"ctx": torch.full_like(ctx, float("inf"))}), "NaN or infinite"),
    "overflowing values": (lambda p, ctx: _dassl(p, {"ctx": torch.full_like(ctx, 3e38)}), "non-finite logits"),
    "a folder": (_folder, "is a folder, expected a prompt checkpoint"),
}


@pytest.mark.parametrize("case", list(PROMPT_FILES))
def test_eval_of_a_bad_prompt_file_is_one_line_naming_it(coop_run, data_root, tmp_path, capsys, case):
    make, message = PROMPT_FILES[case]
    ctx = _prompts(coop_run)[0]["ctx"]
    path = make(tmp_path / "model.pth.tar-5", ctx)
    out = tmp_path / "metrics.json"
    argv = ["eval", "--prompts", str(path), "--learner", "coop", "--dataset", "eurosat", "--root", str(data_root),
            "--set", "backbone.name=tiny-vit", "--out", str(out)]
    assert main(argv) == 2
    line = _error_line(capsys)  # also: no warning line from torch's unpickler
    assert str(path) in line and message in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "export", "eval", "descriptions"])
@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_an_output_that_cannot_be_written_fails_before_any_work(coop_run, data_root, tmp_path, capsys, command,
                                                                 where):
    (tmp_path / "file.txt").write_text("x")
    suffix = {"predict": ".csv", "export": ".safetensors", "eval": ".json", "descriptions": ".json"}[command]
    out = tmp_path / "file.txt" / f"o{suffix}" if where == "under a file" else tmp_path / f"dir{suffix}"
    if where == "a folder":
        out.mkdir()
    ctx = _prompts(coop_run)[0]["ctx"]
    argv = {
        "predict": _argv("predict", coop_run, tmp_path) + ["--out", str(out)],
        "export": ["export", "--run", str(coop_run), "--out", str(out)],
        "eval": ["eval", "--prompts", str(_dassl(tmp_path / "m.pth.tar-1", {"ctx": ctx})), "--learner", "coop",
                 "--dataset", "eurosat", "--root", str(data_root), "--set", "backbone.name=tiny-vit",
                 "--out", str(out)],
        "descriptions": ["data", "descriptions", "--dataset", "world", "--out", str(out)],
    }[command]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # failed before the work (no predictions, no metrics printed)
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1
    if where == "under a file":
        assert f"{tmp_path / 'file.txt'} is a file, not a folder" in err[0]
    else:
        assert f"{out}: is a folder" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
