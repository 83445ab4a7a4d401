"""torchrun data parallelism on CPU (gloo): 2 processes give the metrics of 1 process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tailprompt.cli import main
from tailprompt.engine.distributed import DistContext, check_distributable, shard_sizes
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, execute_run
from tailprompt.schema import ConfigError

SRC = str(Path(__file__).resolve().parents[2] / "src")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun_train(method: str, overrides: list[str], cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "TAILPROMPT_THREADS": "1", "OMP_NUM_THREADS": "1", "TAILPROMPT_CACHE": str(cache)}
    sets = [a for o in overrides + [f"data.cache_dir={cache}"] for a in ("--set", o)]
    proc = subprocess.run([*TORCHRUN, "-m", "tailprompt", "train", "--config", method, *sets],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])  # printed once, by rank 0
    return json.loads((Path(summary["run_dir"]) / "result.json").read_text())


def metrics(result: dict) -> dict:
    return {name: (s["accuracy"], s["nll"], s["ece"]) for name, s in result["splits"].items()}


@pytest.mark.slow
@pytest.mark.parametrize(("method", "extra"), [
    ("cpt_coop", []),  # cached features (the fill sharded over the ranks), CPT's batch statistics
    ("maple", []),  # the prompted image tower on half batches
], ids=["cpt_coop-cached", "maple"])
def test_two_processes_match_one(method, extra, base_overrides, tmp_path):
    overrides = [o for o in base_overrides if not o.startswith("data.cache_dir")] + extra + [
        "optim.batch_size=8", "optim.epochs=2", "backbone.precision=fp32"]  # both sides fp32, whatever the CPU
    one = execute_run(resolve_config(method, overrides + [f"data.cache_dir={tmp_path / 'cache1'}"]),
                      BackboneCache()).result
    shutil.rmtree(tmp_path / "runs")
    two = torchrun_train(method, overrides, tmp_path / "cache2")  # fresh cache: the fill is sharded too
    assert two["run_id"] == one["run_id"]
    # The documented tolerance (README "Multi-GPU runs"): loss curve to 1e-5 relative, NLL and ECE to 1e-4.
    assert two["loss_curve"].keys() == one["loss_curve"].keys()
    for term, values in one["loss_curve"].items():
        assert two["loss_curve"][term] == pytest.approx(values, rel=1e-5)
    for name, (acc, nll, ece) in metrics(one).items():
        acc2, nll2, ece2 = metrics(two)[name]
        assert acc2 == acc and nll2 == pytest.approx(nll, abs=1e-4) and ece2 == pytest.approx(ece, abs=1e-4)


def test_batch_shares_cover_the_batch_in_order():
    assert shard_sizes(8, 2) == [4, 4] and shard_sizes(7, 3) == [3, 2, 2]
    shares = [DistContext(r, 3, r).share(7) for r in range(3)]
    assert shares == [(0, 3), (3, 5), (5, 7)]


def test_what_cannot_be_distributed_fails_before_anything_is_written(base_overrides, tmp_path):
    group = DistContext(0, 2, 0)
    with pytest.raises(ConfigError, match="rewrites gradients"):
        check_distributable([SimpleNamespace(name="prograd", transform_gradients=lambda p, t: None)], 8, group)
    with pytest.raises(ConfigError, match="encodes extra training images"):
        check_distributable([SimpleNamespace(name="dpc", reads=frozenset({"encode_training_images"}))], 8, group)
    cfg = resolve_config("coop", base_overrides + ["optim.batch_size=1"])
    with pytest.raises(ConfigError, match="optim.batch_size"):
        execute_run(cfg, group=group)  # raised before any collective and before the run folder exists
    assert not list((tmp_path / "runs").glob("*/*"))  # no run folder (the output folder may exist)


def test_sweep_under_torchrun_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    (tmp_path / "s.yaml").write_text("methods: [coop]\n")
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun" in err and "local-parallel" in err
