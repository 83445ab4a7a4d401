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
    ("eval.temperature=1.0e-300", "eval.temperature"),  # 0 in float32: NaN ECE
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
    ("output_dir=''", "output_dir"),
    ("data.root=' '", "data.root"),
    ("data.cache_dir=''", "data.cache_dir"),
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
    (b"learner: {name: coop}\noptim: {lr: 0.1}\nlearner: {name: maple}\n", "key 'learner' appears twice"),
    (b"", "empty config file"),
    (b"# only a comment\n\n", "empty config file"),
])
def test_unreadable_config_files_name_the_file(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and expected in err[0]


@pytest.mark.parametrize("command", [
    ["train", "--config", "{fifo}.yaml"],
    ["sweep", "{fifo}.yaml"],
    ["eval", "--run", "{run}", "--dataset", "world"],
])
def test_a_pipe_where_a_file_is_read_is_one_line_not_a_hang(tmp_path, capsys, command):
    fifo = tmp_path / "pipe"
    os.mkfifo(f"{fifo}.yaml")
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "result.json")  # opened for reading, a FIFO without a writer blocks forever
    argv = [a.format(fifo=fifo, run=run) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err


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


def test_descriptions_no_objective_reads_are_named_as_ignored(base_overrides, tmp_path, caplog):
    path = tmp_path / "descriptions.json"
    path.write_text("{}")
    execute_run(resolve_config("coop", base_overrides + SHORT + [f"data.descriptions={path}"]), BackboneCache())
    assert any("data.descriptions is set" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


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


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "preset: {dir}/a.yaml\n"}, "a config file cannot be its own preset"),
    ({"a.yaml": "preset: {dir}/b.yaml\n", "b.yaml": "preset: {dir}/./a.yaml\n"}, "leads back to a config file"),
    ({"a.yaml": "preset: [coop]\n"}, "preset: expected a preset name or a config file path, got ['coop']"),
    ({"a.yaml": "learner: &x {{name: coop, extra: *x}}\n"}, "a YAML alias refers to a value that contains it"),
])
def test_config_files_that_refer_to_themselves_are_one_line(tmp_path, capsys, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text.format(dir=tmp_path))
    assert main(["train", "--config", str(tmp_path / "a.yaml"), "--print-config"]) == 2
    line = _one_error_line(capsys)
    assert message in line and str(tmp_path) in line


@pytest.mark.parametrize("override, message", [
    ("objectives.3.name=cpt", "override objectives.3.name: expected an index 0..0 into objectives (a list of 1)"),
    ("objectives.x.name=cpt", "override objectives.x.name: expected an index 0..0"),
    ("seed=99999999999999999999999", "seed: expected an integer in 0..2**63-1"),
    ("optim.lr=1e-3", "optim.lr: expected a number, got '1e-3' (text: YAML reads exponent notation"),
    ("backbone.quick_gelu=maybe", "backbone.quick_gelu: expected one of ['auto'] or true/false, got 'maybe'"),
    ("optim={lr: 0.1, lr: 0.2}", "key 'lr' appears twice in one mapping"),
    ("eval.temperature_fit=adam", "eval.temperature_fit"),
    ("eval.nc1_global_mean=median", "eval.nc1_global_mean"),
])
def test_override_values_of_the_wrong_form_are_one_line_naming_the_key(capsys, override, message):
    assert main(["train", "--config", "coop", "--set", override, "--print-config"]) == 2
    assert message in _one_error_line(capsys)


def test_a_dpc_option_of_the_wrong_type_is_one_line(capsys):
    assert main(["train", "--config", "dpc_coop", "--set", "learner.frozen_stage1=maybe", "--print-config"]) == 2
    assert "learner.frozen_stage1" in _one_error_line(capsys)


def test_a_cache_folder_under_a_file_fails_before_training(base_overrides, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    argv = ["train", "--config", "coop", *(a for o in base_overrides + SHORT for a in ("--set", o)),
            "--set", f"data.cache_dir={tmp_path / 'file.txt' / 'cache'}"]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert f"{tmp_path / 'file.txt' / 'cache'}: cache folder is not writable" in line and "data.cache_dir" in line
    assert not list((tmp_path / "runs").rglob("*.json"))


@pytest.mark.parametrize("text, message", [
    ("methods: [coop]\nset: [1]\n", "'set' must map dotted config keys to values"),
    ("methods: [coop]\nset: 3\n", "'set' must map dotted config keys to values"),
    ("methods: [coop, {a: 1}]\n", "methods[1]: expected a preset name or a config file, got {'a': 1}"),
    ("methods: [null]\n", "methods[0]: expected a preset name or a config file, got None"),
    ("methods: [coop]\ninit_from: {coop: coop}\n", "a method cannot start from its own runs"),
    ("methods: [coop]\ngrid: {'': [1]}\n", "grid: expected dotted config keys"),
    ("methods: [coop]\ngrid: {seed: [a]}\n", "method 'coop' at seed=a: seed: expected an integer, got 'a'"),
    ("methods: [coop]\ngrid: {objectives.4.name: [cpt]}\n", "override objectives.4.name: expected an index"),
    ("methods: [coop]\nset: {optim.nosuch: 1}\n", "method 'coop': unknown key optim.'nosuch'"),
])
def test_sweep_files_of_the_wrong_shape_are_one_line_naming_the_file(tmp_path, capsys, text, message):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(text)
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"tailprompt sweep: error: {sweep}: ") and message in line
