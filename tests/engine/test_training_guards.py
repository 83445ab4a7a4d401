"""Failures met during a run: non-finite training, unwritable output, corrupt files a sweep meets."""

from __future__ import annotations

import logging

import pytest
import torch

from tailprompt.cli import main
from tailprompt.engine.finite import FiniteGuard, NonFiniteError
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import CHECKPOINT, BackboneCache, execute_run, run_directory
from tailprompt.errors import UserError

SHORT = ["optim.epochs=2", "optim.batch_size=4", "eval.fit_temperature=false", "optim.checkpoint_every_s=0"]


def test_guard_names_the_first_bad_step_and_term():
    guard = FiniteGuard()
    guard.watch(0, 0, {"text features": torch.ones(3), "cpt/tetf": torch.tensor(1.0)})
    guard.check()
    guard.watch(1, 0, {"text features": torch.ones(3), "cpt/tetf": torch.tensor(float("nan"))})
    guard.watch(2, 1, {"text features": torch.tensor([1.0, float("inf")]), "cpt/tetf": torch.tensor(1.0)})
    with pytest.raises(NonFiniteError, match=r"step 1 \(epoch 0\) in cpt/tetf;"):
        guard.check()


def test_nan_backbone_weights_stop_training_and_write_nothing(base_overrides):
    backbones = BackboneCache()
    cfg = resolve_config("coop", base_overrides + SHORT + ["data.cache=false"])
    backbone = backbones.get(cfg.backbone)
    run_dir = run_directory(cfg, backbone)
    params = dict(backbone.named_parameters())
    name = next(n for n in params if "text_projection" in n)
    with torch.no_grad():
        saved = params[name].clone()
        params[name].fill_(float("nan"))
    try:
        with pytest.raises(NonFiniteError, match="frozen text features hold NaN or inf"):
            execute_run(cfg, backbones)
    finally:
        with torch.no_grad():
            params[name].copy_(saved)
    assert not (run_dir / "result.json").exists() and not (run_dir / CHECKPOINT).exists()


def test_a_loss_that_diverges_stops_training_naming_the_step(base_overrides, monkeypatch):
    from tailprompt.engine import train

    real = train.objective_terms

    def diverging(objectives, state):  # a term that blows up on the third step
        loss = real(objectives, state)
        diverging.calls += 1
        if diverging.calls >= 3:
            loss.logged = {**loss.logged, "cross_entropy/ce": loss.logged["cross_entropy/ce"] * float("inf")}
            loss.total = loss.total * float("nan")
        return loss

    diverging.calls = 0
    monkeypatch.setattr(train, "objective_terms", diverging)
    backbones = BackboneCache()
    cfg = resolve_config("coop", base_overrides + SHORT)
    run_dir = run_directory(cfg, backbones.get(cfg.backbone))
    with pytest.raises(NonFiniteError, match=r"at step 2 \(epoch \d\) in cross_entropy/ce, total loss;"):
        execute_run(cfg, backbones)
    assert not (run_dir / "result.json").exists() and not (run_dir / CHECKPOINT).exists()


def test_an_unwritable_output_folder_fails_before_training(base_overrides, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr("tailprompt.engine.run.train_prompts", no_training)
    cfg = resolve_config("coop", base_overrides + SHORT + [f"output_dir={blocker / 'runs'}"])
    with pytest.raises(UserError, match="a_file/runs: output folder is not writable"):
        execute_run(cfg)


def test_a_result_path_taken_by_a_folder_fails_before_training(base_overrides, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started although the result could never be written")

    monkeypatch.setattr("tailprompt.engine.run.train_prompts", no_training)
    backbones = BackboneCache()
    cfg = resolve_config("coop", base_overrides + SHORT)
    (run_directory(cfg, backbones.get(cfg.backbone)) / "result.json").mkdir(parents=True)
    with pytest.raises(UserError, match="result.json: is a folder, expected a run's result file"):
        execute_run(cfg, backbones)


@pytest.mark.parametrize("content", [b'{"method": "coop", ', b"\xff\xfe", b"[1, 2]", b"{}", b'{"splits": []}'])
def test_a_corrupt_result_met_by_sweep_is_one_line_naming_it(base_overrides, tmp_path, capsys, content):
    sweep = tmp_path / "sweep.yaml"
    values = dict(o.split("=", 1) for o in base_overrides + SHORT)  # SHORT's settings win, once each
    sets = "\n".join(f"  {key}: {value}" for key, value in values.items())
    sweep.write_text(f"methods: [coop]\nset:\n{sets}\n")
    assert main(["sweep", str(sweep)]) == 0
    result = next((tmp_path / "runs").glob("*/result.json"))
    result.write_bytes(content)
    capsys.readouterr()
    assert main(["sweep", str(sweep)]) == 1  # the sweep goes on, then says a run failed
    err = capsys.readouterr().err  # the sweep's progress bar shares stderr: count the lines naming the file
    named = [line for line in err.splitlines() if str(result) in line]
    assert len(named) == 1 and "result file" in named[0]
    assert "Traceback" not in err


def test_a_discarded_checkpoint_is_logged(base_overrides, caplog):
    backbones = BackboneCache()
    cfg = resolve_config("coop", base_overrides + SHORT)
    run_dir = run_directory(cfg, backbones.get(cfg.backbone))
    run_dir.mkdir(parents=True)
    (run_dir / CHECKPOINT).write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="tailprompt.engine.checkpoint"):
        execute_run(cfg, backbones)
    assert any("checkpoint discarded" in r.getMessage() and str(run_dir) in r.getMessage() for r in caplog.records)


def test_no_phase_is_silent(base_overrides, caplog, monkeypatch):
    """Evaluation says what it evaluates, and a sweep passes its progress on to each run's epoch bar."""
    from tailprompt.engine import sweep

    with caplog.at_level(logging.INFO, logger="tailprompt.engine.run"):
        execute_run(resolve_config("coop", base_overrides + SHORT))
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("evaluating base: ") for m in said) and any(m.startswith("evaluating new: ") for m in said)

    seen = []
    monkeypatch.setattr(sweep, "execute_run", lambda cfg, backbones, progress=False: seen.append(progress))
    sweep.run_all([resolve_config("coop", base_overrides)], progress=True, on_result=None)
    assert seen == [True]
