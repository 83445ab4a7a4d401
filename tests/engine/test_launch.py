"""Sweeps through real submitit (its local executor), N local workers, and two sweeps on one folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tailprompt.cli import main
from tailprompt.engine.launch import LaunchOptions, submit
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import CHECKPOINT
from tailprompt.engine.sweep import RUN_ERROR, RUN_LOCK, expand, read_sweep, run_state
from tailprompt.locks import FileLock, read_lock

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def job_env(monkeypatch):
    """Job processes import this checkout's tailprompt and use one torch thread each."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TAILPROMPT_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def sweep_file(path: Path, overrides: list[str], methods=("zeroshot", "coop"), seeds=(1, 2, 3), extra="") -> Path:
    fixed = "\n".join(f"  {o.split('=', 1)[0]}: {o.split('=', 1)[1]}" for o in overrides if not o.startswith("seed"))
    path.write_text(f"methods: [{', '.join(methods)}]\ngrid:\n  seed: [{', '.join(map(str, seeds))}]\n"
                    f"set:\n{fixed}\n  optim.max_steps: 3\n{extra}")
    return path


def result_dirs(runs: Path) -> list[Path]:
    return sorted(d for d in runs.iterdir() if (d / "result.json").is_file())


@pytest.mark.slow
def test_submitit_sweep_runs_every_run_exactly_once(base_overrides, tmp_path, capsys, job_env):
    sweep = sweep_file(tmp_path / "sweep.yaml", base_overrides, methods=("coop", "kgcoop"))
    assert main(["sweep", str(sweep), "--launcher", "submitit-local", "--timeout-min", "10"]) == 0
    out = capsys.readouterr().out
    assert "0 done or running elsewhere, 6 to submit" in out
    assert "6 runs: 6 run now, 0 already complete, 0 being trained elsewhere, 0 failed" in out
    logs = [line.split("log: ")[1] for line in out.splitlines() if line.startswith("job ")]
    assert len(logs) == 6 and all(Path(p).is_file() for p in logs)  # printed log paths exist
    runs = tmp_path / "runs"
    assert len(result_dirs(runs)) == 6
    assert not list(runs.glob(f"*/{RUN_LOCK}"))  # every lock released
    assert main(["sweep", str(sweep), "--launcher", "submitit-local"]) == 0
    assert "6 done or running elsewhere, 0 to submit" in capsys.readouterr().out
    assert main(["sweep", str(sweep), "--status"]) == 0
    assert "6 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_job_resumes_from_its_checkpoint_when_resubmitted(base_overrides, tmp_path, job_env):
    overrides = base_overrides + ["data.cache=false", "optim.epochs=40", "optim.batch_size=8",
                                  "optim.checkpoint_every_s=0"]
    cfg = resolve_config("coop", overrides)
    opts = LaunchOptions(launcher="submitit-local", timeout_min=10, log_dir=str(tmp_path / "jobs"))
    job = submit([cfg], opts)[0]
    runs = tmp_path / "runs"
    deadline = time.time() + 120
    while not list(runs.glob(f"*/{CHECKPOINT}")) and time.time() < deadline and not job.done():
        time.sleep(0.05)
    lock_path = next(runs.glob(f"*/{RUN_LOCK}"))
    owner = read_lock(lock_path).owner
    os.kill(owner.pid, signal.SIGKILL)  # the node dies: no cleanup, the lock stays behind
    job.wait()
    run_dir = lock_path.parent
    assert not (run_dir / "result.json").exists() and (run_dir / CHECKPOINT).is_file()
    assert run_state(run_dir)[0] == "pending"  # a dead owner's lock does not count as running

    again = submit([cfg], opts)[0]
    assert again.result().status == "ran"
    log = Path(again.paths.stderr).read_text()
    assert "taking over the stale lock" in log and "resuming training at epoch" in log
    result = json.loads((run_dir / "result.json").read_text())
    assert len(result["loss_curve"]["total"]) == 40  # the curve continues, every epoch once


@pytest.mark.slow
def test_two_sweeps_at_once_on_one_folder_train_each_run_once(base_overrides, tmp_path, job_env):
    sweep = sweep_file(tmp_path / "sweep.yaml", base_overrides, methods=("coop",))
    cmd = [sys.executable, "-m", "tailprompt", "sweep", str(sweep)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = [int(out.split(" run now")[0].rsplit(" ", 1)[1]) for out, _ in outs]
    assert sum(ran) == 3  # each of the 3 runs trained by exactly one sweep
    assert len(result_dirs(tmp_path / "runs")) == 3


def test_local_parallel_runs_n_at_once(base_overrides, tmp_path, capsys, job_env):
    # zero-shot does not depend on the seed: its two configs are one run, started once
    sweep = sweep_file(tmp_path / "sweep.yaml", base_overrides, methods=("zeroshot", "coop"), seeds=(1, 2))
    assert main(["sweep", str(sweep), "--launcher", "local-parallel", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("ran ") for line in out.splitlines()) == 3  # zero-shot started once
    # the summary counts the sweep file's 4 configs: the second zero-shot one found its run complete
    assert "4 runs: 3 run now, 1 already complete, 0 being trained elsewhere" in out
    assert len(result_dirs(tmp_path / "runs")) == 3


def test_status_lists_done_running_failed_and_pending(base_overrides, tmp_path, capsys):
    sweep = sweep_file(tmp_path / "sweep.yaml", base_overrides, methods=("coop",), seeds=(1, 2, 3, 4))
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    dirs = [Path(line.split()[1]) for line in capsys.readouterr().out.splitlines()]
    cfg = expand(read_sweep(sweep))[0]
    from tailprompt.engine.run import execute_run

    execute_run(cfg)  # seed 1: done
    held = FileLock(dirs[1] / RUN_LOCK)
    assert held.acquire()  # seed 2: running
    dirs[2].mkdir(parents=True)
    (dirs[2] / RUN_ERROR).write_text(json.dumps({"error": "RuntimeError: out of memory", "log": "/x/1_0.err"}))
    assert main(["sweep", str(sweep), "--status"]) == 0
    held.release()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("done") and lines[3].startswith("pending")
    assert lines[1].startswith("running") and f"pid {os.getpid()}" in lines[1]
    assert lines[2].startswith("failed") and "out of memory (log: /x/1_0.err)" in lines[2]
    assert lines[4] == "1 done, 1 running, 1 failed, 1 pending"


def test_launcher_mistakes_are_one_line_errors(base_overrides, tmp_path, capsys, monkeypatch):
    sweep = sweep_file(tmp_path / "sweep.yaml", base_overrides, methods=("zeroshot",), seeds=(1,))
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    assert main(["sweep", str(sweep), "--launcher", "submitit"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sbatch" in err and "--launcher submitit-local" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(sweep), "--launcher", "slurmy"])
    assert e.value.code == 2 and "invalid choice: 'slurmy'" in capsys.readouterr().err
    assert main(["sweep", str(sweep), "--partition", "gpu"]) == 2
    assert "--partition applies to --launcher submitit" in capsys.readouterr().err
    bad = sweep_file(tmp_path / "bad.yaml", base_overrides, methods=("zeroshot",), seeds=(1,),
                     extra="slurm_bogus_key: 1\n")
    assert main(["sweep", str(bad), "--launcher", "submitit-local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "slurm_bogus_key" in err and "bad.yaml" in err


def test_ctrl_c_on_a_sweep_is_one_line_and_releases_the_lock(base_overrides, tmp_path, capsys, monkeypatch):
    import tailprompt.engine.sweep as sweep_mod

    sweep = sweep_file(tmp_path / "sweep.yaml", base_overrides, methods=("coop",), seeds=(1,))
    held = []

    def interrupted(cfg, backbones, **kwargs):
        held.extend((tmp_path / "runs").glob(f"*/{RUN_LOCK}"))
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "execute_run", interrupted)
    assert main(["sweep", str(sweep)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # (besides the progress bar)
    assert "Traceback" not in err and len(errors) == 1
    assert "interrupted" in errors[0] and f"tailprompt sweep {sweep}" in errors[0]
    assert len(held) == 1 and not held[0].exists()  # the run was locked while it ran, and released


def test_the_command_lists_every_launcher():
    from tailprompt.commands.sweep import LAUNCHERS as COMMAND_LAUNCHERS
    from tailprompt.engine.launch import LAUNCHERS

    assert COMMAND_LAUNCHERS == LAUNCHERS


@pytest.mark.parametrize("name, content, detail", [
    (RUN_ERROR, b"\xff\xfe", f"its {RUN_ERROR} is unreadable"),
    (RUN_ERROR, b"[1]", f"its {RUN_ERROR} is unreadable"),
    (RUN_ERROR, b'{"error": "ValueError: x", "log": null}', "ValueError: x (log: none)"),
    ("result.json", b'{"trunc', "result.json: result file (delete it to redo the run) is not valid JSON"),
    ("result.json", b"[1]", "should hold a JSON object"),
])
def test_status_of_a_run_with_damaged_files_names_them(tmp_path, name, content, detail):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).write_bytes(content)
    state, text = run_state(run_dir)
    assert state == "failed" and detail in text and "\n" not in text
