"""`tailprompt export` + the docs/export.md recipe: plain open_clip reproduces the run's logits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tailprompt.cli import main
from tailprompt.engine.saved import open_run, run_backbone, run_learner

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def recipe() -> str:
    """The doc's python block, exactly as written."""
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return block


def test_the_documented_recipe_gives_the_runs_logits(coop_run, tiny_weights, tmp_path, capsys):
    out = tmp_path / "prompts.safetensors"
    assert main(["export", "--run", str(coop_run), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["open_clip_recipe"] is True
    image = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (180, 60, 30)).save(image)
    code = recipe()
    first, rest = code.split("\n", 1)
    assert first.startswith("EXPORT, WEIGHTS, IMAGE = ")
    scope: dict = {}
    exec(f"EXPORT, WEIGHTS, IMAGE = {str(out)!r}, {str(tiny_weights)!r}, {str(image)!r}\n" + rest, scope)
    assert len(code.strip().splitlines()) <= 30  # "a ~20-line recipe"

    saved = open_run(coop_run)
    backbone = run_backbone(saved, "cpu")
    learner = run_learner(saved, backbone)
    with torch.no_grad():
        img = learner.image_features(backbone.preprocess_eval(Image.open(image).convert("RGB"))[None])
        expected = backbone.logit_scale * img @ learner.text_features(None).T
    torch.testing.assert_close(scope["logits"].float(), expected.float(), atol=1e-4, rtol=1e-4)

    with safe_open(str(out), "pt") as f:
        info = json.loads(f.metadata()["tailprompt"])
        names = set(f.keys())
    assert names == {"ctx", "text_features"}
    assert info["backbone"]["identity"] == backbone.identity and info["classnames"] == saved.classnames
    assert info["learner"]["name"] == "coop" and info["template"] == saved.template
    assert {"size", "mean", "std"} <= set(info["preprocess"]) and info["tokenizer"]["context_length"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--run", "{run}", "--out", "{tmp}/p.pt"], "ending in .safetensors"),
    (["--run", "{tmp}", "--out", "{tmp}/p.safetensors"], "not a finished run"),
    (["--run", "{run}", "--out", "{tmp}/file.txt/p.safetensors"], "not writable"),
])
def test_bad_input_is_one_line(coop_run, tmp_path, capsys, argv, message):
    (tmp_path / "file.txt").write_text("x")
    argv = [a.format(tmp=tmp_path, run=coop_run) for a in argv]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
