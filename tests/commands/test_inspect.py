"""`tailprompt inspect`: nearest tokens, norms, cosine to the init words, class drift."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tailprompt.cli import main
from tailprompt.engine.saved import open_run


def test_inspect_reports_every_context_vector_and_the_class_drift(coop_run, capsys):
    assert main(["inspect", "--run", str(coop_run), "--json", "--top", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = open_run(coop_run)
    ctx = saved.prompts["ctx"]
    assert [v["index"] for v in report["vectors"]] == list(range(ctx.shape[0]))
    for v, row in zip(report["vectors"], ctx):
        assert v["norm"] == pytest.approx(float(row.norm()), rel=1e-5)
        assert len(v["nearest"]) == 3 and v["nearest"][0]["cosine"] >= v["nearest"][-1]["cosine"]
    # coop's preset starts from "a photo of a": after 3 steps the context is still close to those words
    assert report["init"] == "a photo of a"
    assert [v["init_word"] for v in report["vectors"]] == ["a", "photo", "of", "a"]
    assert all(v["cosine_to_init"] > 0.9 for v in report["vectors"])
    assert any(t["token"] == "photo" for t in report["vectors"][1]["nearest"])
    per_class = report["classes"]["per_class"]
    assert list(per_class) == saved.classnames
    assert 0 <= report["classes"]["mean_drift"] <= report["classes"]["max_drift"] <= 2
    assert main(["inspect", "--run", str(coop_run)]) == 0
    text = capsys.readouterr().out
    assert "ctx[0]" in text and "drift" in text


def test_a_truncated_config_is_an_error_naming_it(coop_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(coop_run, run)
    lines = (run / "config.yaml").read_text().splitlines()
    (run / "config.yaml").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    assert main(["inspect", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run / "config.yaml") in err[0] and "truncated" in err[0]


@pytest.mark.parametrize("damage", ["prompts", "result"])
def test_damaged_run_files_are_one_line_naming_them(coop_run, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(coop_run, run)
    name = {"prompts": "prompts.safetensors", "result": "result.json"}[damage]
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) // 2])
    assert main(["inspect", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run / name) in err[0]
    assert Path(run / name).exists()
