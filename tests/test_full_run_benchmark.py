"""`benchmarks/full_run.py` end to end at toy size: its runs go through the real CLI and report real phases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_full_run_benchmark_runs_a_preset_through_the_cli_and_times_the_text_tower(tmp_path):
    argv = [sys.executable, str(ROOT / "benchmarks" / "full_run.py"), "--presets", "kgcoop", "--arch", "tiny-vit",
            "--images-per-class", "4", "--set", "optim.max_steps=1", "--text-k", "10", "--text-m", "4",
            "--text-names", "synthetic", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    run = report["runs"]["kgcoop"]
    assert run["steps"] == 1 and run["train_images"] == 10 and run["s_per_step"] > 0
    assert set(run["accuracy"]) == {"base", "new"} and run["peak_rss_mb"] > 0
    assert (tmp_path / "runs").is_dir() and any((tmp_path / "runs").rglob("result.json"))
    (row,) = report["text_tower"]["rows"]
    assert (row["K"], row["M"]) == (10, 4) and row["positions_shared"] < row["positions_plain"]
