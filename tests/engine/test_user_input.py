"""Bad input a user can cause, by class: each is one line naming the key or file, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from tailprompt.cli import main
from tailprompt.data.registry import DATASETS
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, execute_run
from tailprompt.schema import ConfigError
from tailprompt.utils import write_json_atomic

SHORT = ["optim.epochs=1", "optim.max_steps=2", "optim.batch_size=4", "eval.fit_temperature=false"]


@pytest.mark.parametrize("override, key", [
    ("data.shots=0", "data.shots"),
    ("data.shots=-3", "data.shots"),
    ("data.tau=0", "data.tau"),
    ("data.tau=1.5", "data.tau"),
    ("data.tau=.nan", "data.tau"),
    ("data.n_views=0", "data.n_views"),
    ("data.batch_size_eval=0", "data.batch_size_eval"),
    ("data.num_workers=-1", "data.num_workers"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.lr=-0.1", "optim.lr"),
    ("optim.momentum=1.0", "optim.momentum"),
    ("optim.weight_decay=-1", "optim.weight_decay"),
    ("optim.epochs=-1", "optim.epochs"),
    ("optim.batch_size=0", "optim.batch_size"),
    ("optim.max_steps=0", "optim.max_steps"),
    ("optim.warmup_lr=.inf", "optim.warmup_lr"),
    ("eval.ece_bins=0", "eval.ece_bins"),
    ("eval.dac_k=0", "eval.dac_k"),
    ("eval.temperature=0", "eval.temperature"),
    ("seed=-1", "seed"),
    ("learner.n_ctx=0", "learner.n_ctx"),
    ("objectives=[{name: cross_entropy, weights: {ce: .nan}}]", "objectives[0].weights.ce"),
    ("objectives=[{name: cross_entropy, weights: {ce: -1}}]", "objectives[0].weights.ce"),
])
def test_values_out_of_range_are_rejected_at_resolve_time_naming_the_key(override, key):
    # the key, dotted or as "section: field" (a learner's own config check)
    pattern = "^" + r"(\.|: )".join(re.escape(part) for part in key.split(".")) + ": expected"
    with pytest.raises(ConfigError, match=pattern):
        resolve_config("coop", [override])


@pytest.mark.parametrize("device", ["cuda:7", "gpu0", "tpu"])
def test_a_device_this_machine_lacks_is_a_config_error(device, capsys):
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 7:
            pytest.skip("this machine has 8 CUDA devices")
    assert main(["train", "--config", "coop", "--set", f"backbone.device={device}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone.device" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("content, expected", [
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"learner: {name: coop\n", "not valid YAML"),
    (b"- just\n- a list\n", "expected a mapping"),
])
def test_unreadable_config_files_name_the_file(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and expected in err[0]


def test_the_default_dataset_is_registered():
    assert resolve_config("cpt_coop").data.name in DATASETS


def test_a_preset_name_is_not_read_as_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "maple").mkdir()
    (tmp_path / "coop").write_text("not a config")
    assert resolve_config("maple").learner.name == "maple"
    assert resolve_config("coop").learner.name == "coop"
    with pytest.raises(ConfigError, match="maple: is a folder"):
        resolve_config("./maple")


def test_results_are_readable_by_colleagues(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "result.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644


def test_reusing_a_runs_ids_records_that_runs_tau(base_overrides, tmp_path):
    backbones = BackboneCache()
    first = execute_run(resolve_config("coop", base_overrides + SHORT), backbones)  # tau 0.06
    again = [o for o in base_overrides if not o.startswith("data.tau")]
    reuse = resolve_config("coop", again + SHORT + [f"data.fewshot_ids={first.run_dir / 'result.json'}",
                                                    "seed=2"])
    assert reuse.data.tau == 0.06
    r = execute_run(reuse, backbones).result
    assert r["tau"] == 0.06 and r["sampling"]["ids"] == first.result["sampling"]["ids"]
    with pytest.raises(ConfigError, match="data.tau=1.0 disagrees with data.fewshot_ids"):
        resolve_config("coop", again + [f"data.fewshot_ids={first.run_dir / 'result.json'}", "data.tau=1.0"])


def test_zero_shot_runs_once_for_every_tau_and_seed(base_overrides, tmp_path):
    backbones = BackboneCache()
    base = [o for o in base_overrides if not o.startswith(("data.tau", "seed"))] + ["eval.fit_temperature=false"]
    first = execute_run(resolve_config("zeroshot", base + ["data.tau=1.0", "seed=1"]), backbones)
    assert first.result["sampling_independent"] is True and not first.skipped
    for tau, seed in ((0.06, 1), (1.0, 2), (0.25, 3)):
        other = execute_run(resolve_config("zeroshot", base + [f"data.tau={tau}", f"seed={seed}"]), backbones)
        assert other.skipped and other.run_dir == first.run_dir
    trained = execute_run(resolve_config("coop", base + SHORT + ["data.tau=1.0"]), backbones).result
    assert trained["sampling_independent"] is False
    json.dumps(first.result)  # still plain data
    assert Path(first.run_dir / "result.json").is_file()
