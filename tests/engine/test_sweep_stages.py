"""Two-stage sweeps: `init_from` points each second-stage run at its first stage's run with the same overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, run_directory
from tailprompt.engine.sweep import SweepSpec, expand, read_sweep, run_all
from tailprompt.schema import ConfigError

SHORT = ["optim.epochs=1", "optim.max_steps=2", "optim.batch_size=4", "eval.fit_temperature=false",
         "eval.geometry=false"]


def test_second_stage_starts_from_the_first_stage_run_of_the_same_cell(base_overrides, tmp_path):
    # the grid key must not be one base_overrides sets (the extra overrides come last and would win)
    spec = SweepSpec(["coop", "dpc_coop"], {"data.shots": [3, 4]}, init_from={"dpc_coop": "coop"})
    configs = expand(spec, base_overrides + SHORT)
    reports = run_all(configs, progress=False)
    backbones = BackboneCache()
    coop_dirs = {c.data.shots: run_directory(c, backbones.get(c.backbone)) for c in configs if c.method == "coop"}
    for cfg, report in zip(configs, reports):
        assert report.status == "ran" and (Path(report.run_dir) / "result.json").is_file()
        if cfg.method == "dpc_coop":
            assert cfg.init.from_run == str(coop_dirs[cfg.data.shots])  # same cell, same everything else


def write(tmp_path, data) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_init_from_needs_the_first_stage_listed_before(tmp_path):
    with pytest.raises(ConfigError, match="'coop' before 'dpc_coop'"):
        read_sweep(write(tmp_path, {"methods": ["dpc_coop", "coop"], "init_from": {"dpc_coop": "coop"}}))
    with pytest.raises(ConfigError, match="needs both in 'methods'"):
        read_sweep(write(tmp_path, {"methods": ["dpc_coop"], "init_from": {"dpc_coop": "coop"}}))
    assert read_sweep(write(tmp_path, {"methods": ["coop", "dpc_coop"], "init_from": {"dpc_coop": "coop"}})).init_from


def test_a_first_stage_of_another_learner_is_refused_before_anything_trains(base_overrides, tmp_path):
    from tailprompt.engine.run import execute_run

    spec = SweepSpec(["maple", "dpc_coop"], {}, init_from={"dpc_coop": "maple"}, source="sweep.yaml")
    with pytest.raises(ConfigError, match="init_from dpc_coop: maple: 'maple' trains learner 'maple', but this run "
                                          "starts from a 'coop' run"):
        expand(spec, base_overrides + SHORT)
    cfg = resolve_config("dpc_coop", base_overrides + SHORT + ["init.from_preset=maple"])
    with pytest.raises(ConfigError, match="init.from_preset: 'maple' trains learner 'maple'"):
        execute_run(cfg, BackboneCache())
    assert not list((tmp_path / "runs").glob("*/result.json"))  # the maple stage was not trained
