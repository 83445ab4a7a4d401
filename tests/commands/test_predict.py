"""`tailprompt predict`: per-image labels with a run's prompts; unreadable images are skipped and listed."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tailprompt.cli import main
from tailprompt.engine.saved import open_run, run_backbone, run_learner
from tailprompt.testing.images import decompression_bomb_png


def _images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (40, 36), (40 * i, 200 - 50 * i, 90)).save(path)
        paths.append(path)
    return paths


def _run_probs(run: Path, path: Path) -> torch.Tensor:
    saved = open_run(run)
    backbone = run_backbone(saved, "cpu")
    learner = run_learner(saved, backbone)
    with torch.no_grad():
        img = learner.image_features(backbone.preprocess_eval(Image.open(path).convert("RGB"))[None])
        return (backbone.logit_scale * img @ learner.text_features(None).T).softmax(-1)[0]


def test_predict_a_folder_writes_top_k_with_the_runs_probabilities(coop_run, tmp_path, capsys):
    paths = _images(tmp_path / "imgs" / "nested")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "imgs" / "bomb.png").write_bytes(decompression_bomb_png())  # PIL's refusal is not an OSError
    out = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(coop_run), str(tmp_path / "imgs"), "--top-k", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 unreadable image(s)" in captured.err and "broken.jpg" in captured.err
    assert "bomb.png: Image size (10000000000 pixels) exceeds limit" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 * len(paths) and {r["rank"] for r in rows} == {"1", "2", "3"}
    classnames = open_run(coop_run).classnames
    for path in paths:
        mine = [r for r in rows if r["path"] == str(path)]
        probs = _run_probs(coop_run, path)
        top = probs.topk(3)
        assert [r["label"] for r in mine] == [classnames[i] for i in top.indices.tolist()]
        assert [float(r["prob"]) for r in mine] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_predict_other_classes_and_json(coop_run, tmp_path, capsys):
    (path,) = _images(tmp_path / "one", 1)
    classes = tmp_path / "classes.txt"
    classes.write_text("# rivers, woods and roads\nriver\nforest\nhighway\n")  # a comment line is skipped
    out = tmp_path / "preds.json"
    assert main(["predict", "--run", str(coop_run), str(path), "--classes", str(classes), "--out", str(out)]) == 0
    (pred,) = json.loads(out.read_text())
    assert sorted(pred["labels"]) == ["forest", "highway", "river"] and sum(pred["probs"]) == pytest.approx(1.0)


@pytest.mark.parametrize("argv, message", [
    (["--run", "{tmp}/nope", "{img}"], "not a run folder"),
    (["--run", "{run}", "{tmp}/missing.png"], "no such image or folder"),
    (["--run", "{run}", "{img}", "--top-k", "0"], "--top-k"),
    (["--run", "{run}", "{img}", "--out", "{tmp}/p.txt"], ".csv or .json"),
    (["--run", "{run}", "{tmp}/bad.jpg"], "no readable image"),
    (["--run", "{run}", "{img}", "--classes", "{tmp}/empty.txt"], "class list is empty"),
    (["--run", "{run}", "{img}", "--classes", "{tmp}/twice.txt"], "twice.txt:3: duplicate class name 'cat'"),
    (["--run", "{run}", "{tmp}/pipes"], "no image files found"),  # a FIFO named like an image would block
    (["--run", "{run}", "{tmp}/pipes/a.png"], "not an image file or a folder"),
    (["--run", "{run}", "{img}", "--classes", "{tmp}/pipes/a.png"], "not a regular file"),
])
def test_bad_input_is_one_line(coop_run, tmp_path, capsys, argv, message):
    (img,) = _images(tmp_path / "x", 1)
    (tmp_path / "bad.jpg").write_bytes(b"\x00\x01")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "twice.txt").write_text("cat\ndog\n cat \n")
    (tmp_path / "pipes").mkdir()
    os.mkfifo(tmp_path / "pipes" / "a.png")
    argv = [a.format(tmp=tmp_path, img=img, run=coop_run) for a in argv]
    assert main(["predict", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and message in err[0]
