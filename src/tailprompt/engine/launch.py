"""Where a sweep's runs execute: here one after another, here N at a time, or as SLURM jobs via submitit.

Every launcher runs each run through `run_locked` (a lock per run folder), so launchers can be mixed and
repeated on one output folder: finished runs are skipped, runs another process is training are left to
it, and an interrupted run resumes from its training checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import submitit
import torch

from tailprompt.engine.run import BackboneCache, run_directory
from tailprompt.engine.run_config import RunConfig
from tailprompt.engine.sweep import JobReport, last_error_line, run_all, run_label, run_locked
from tailprompt.schema import ConfigError
from tailprompt.utils import configure_threads

log = logging.getLogger(__name__)

LauncherName = Literal["local", "local-parallel", "submitit", "submitit-local"]
LAUNCHERS: tuple[str, ...] = get_args(LauncherName)


@dataclass
class LaunchOptions:
    launcher: LauncherName = "local"
    jobs: int = 2  # local-parallel: runs at once
    threads_per_job: int | None = None  # torch threads per run (default: cores // jobs, or --cpus-per-run)
    partition: str | None = None
    account: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 240
    array_parallelism: int = 64
    wait: bool = True
    log_dir: str | None = None  # submitit's job folder (default OUTPUT_DIR/.submitit)
    slurm: dict[str, Any] = field(default_factory=dict)  # extra `slurm_*` parameters from the sweep file
    source: str = "sweep file"  # where `slurm` came from, for error messages


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- local-parallel


def parallel_worker(slot: int, threads: int, tasks: Any, results: Any) -> None:
    """One worker process: take runs from `tasks` until a None arrives, put (index, JobReport) on `results`."""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s [job {slot}] %(name)s: %(message)s")
    configure_threads(threads)
    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(slot % torch.cuda.device_count())  # one device per worker, round robin
    backbones = BackboneCache()
    try:
        while (task := tasks.get()) is not None:
            index, cfg = task
            try:
                report = run_locked(cfg, backbones)
            except Exception as e:  # the run left error.json; the worker goes on with the next one
                log.error("run failed: %s: %s", run_label(cfg), last_error_line(e))
                try:
                    run_dir = str(run_directory(cfg, backbones.get(cfg.backbone)))
                except Exception:  # the backbone itself failed to load
                    run_dir = str(cfg.output_dir)
                report = JobReport(run_dir, "failed", last_error_line(e))
            results.put((index, report))
    except KeyboardInterrupt:  # Ctrl-C reaches every worker; the parent prints the one line
        pass


def run_parallel(
    configs: Sequence[RunConfig], jobs: int, threads: int | None = None,
    on_result: Callable[[RunConfig, JobReport], None] | None = None,
) -> list[JobReport]:
    """Run `configs` in `jobs` worker processes (each `threads` torch threads, default cores // jobs)."""
    threads = threads or max(1, cores() // jobs)
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools or CUDA state
    tasks, results = ctx.Queue(), ctx.Queue()
    for task in enumerate(configs):
        tasks.put(task)
    workers = [ctx.Process(target=parallel_worker, args=(slot, threads, tasks, results), daemon=True)
               for slot in range(min(jobs, len(configs)))]
    for _ in workers:
        tasks.put(None)
    for w in workers:
        w.start()
    reports: dict[int, JobReport] = {}
    try:
        while len(reports) < len(configs):
            if not any(w.is_alive() for w in workers) and results.empty():
                raise RuntimeError("every local-parallel worker exited before the sweep finished")
            try:
                index, report = results.get(timeout=1.0)
            except Exception:  # queue.Empty: look at the workers again
                continue
            reports[index] = report
            if on_result:
                on_result(configs[index], report)
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.terminate()
    return [reports[i] for i in range(len(configs))]


# ------------------------------------------------------------------------------------------------------ submitit


class SweepJob(submitit.helpers.Checkpointable):
    """One run as a submitit job; requeued with the same run on timeout or preemption (it resumes)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def __call__(self, cfg: RunConfig) -> JobReport:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        # A SLURM job owns the CPUs of its allocation (its affinity mask); elsewhere count the idle cores.
        configure_threads(self.threads or (cores() if "SLURM_JOB_ID" in os.environ else None))
        log_path = None
        try:
            log_path = str(submitit.JobEnvironment().paths.stderr)
        except Exception:  # not inside a submitit job (a direct call)
            pass
        return run_locked(cfg, BackboneCache(), log_path)


def sbatch_missing_message() -> str:
    return ("--launcher submitit: `sbatch` was not found, so this machine cannot submit SLURM jobs; run the "
            "same sweep through submitit's local executor with --launcher submitit-local (or use --launcher "
            "local / local-parallel)")


def executor_for(opts: LaunchOptions, default_folder: Path) -> submitit.AutoExecutor:
    """A submitit executor with the launch options applied; bad `slurm_*` keys raise a ConfigError naming them."""
    if opts.launcher == "submitit" and shutil.which("sbatch") is None:
        raise ConfigError(sbatch_missing_message())
    folder = Path(opts.log_dir) if opts.log_dir else default_folder
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm" if opts.launcher == "submitit" else "local")
    params: dict[str, Any] = {
        "name": "tailprompt", "timeout_min": opts.timeout_min, "gpus_per_node": opts.gpus_per_run,
        "cpus_per_task": opts.cpus_per_run, "mem_gb": opts.mem_gb, "tasks_per_node": 1,
        "slurm_partition": opts.partition, "slurm_account": opts.account,
        "slurm_array_parallelism": opts.array_parallelism,
    }
    for key, value in opts.slurm.items():
        params[key] = value
    try:
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (NameError, AssertionError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{opts.source}: submitit refused a parameter: {first}") from None
    return executor


def submit(configs: Sequence[RunConfig], opts: LaunchOptions) -> list[submitit.Job]:
    """One job array of the runs; returns the jobs (each job's `paths.stderr` is its log)."""
    executor = executor_for(opts, Path(configs[0].output_dir) / ".submitit")
    threads = opts.threads_per_job or opts.cpus_per_run
    return executor.map_array(SweepJob(threads), list(configs))


def job_report(job: submitit.Job, cfg: RunConfig) -> JobReport:
    """The report of a finished job; a failed job's last error line and log path."""
    try:
        return job.result()
    except Exception as e:  # submitit re-raises the job's error with its traceback in the message
        lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith(" ")]
        line = lines[-1] if lines else type(e).__name__
        return JobReport(str(cfg.output_dir), "failed", f"{line} (log: {job.paths.stderr})")


def run_launcher(
    configs: Sequence[RunConfig], opts: LaunchOptions, echo: Callable[[str], None] = print,
) -> list[JobReport]:
    """Run the configs with the chosen launcher; with submitit and `wait=False`, an empty list."""
    if opts.launcher == "local":
        return run_all(configs, progress=True)
    if opts.launcher == "local-parallel":
        def show(cfg: RunConfig, report: JobReport) -> None:
            echo(f"{report.status:6} {run_label(cfg)}  {report.run_dir}" + (f"  {report.detail}" if report.detail
                                                                           else ""))
        return run_parallel(configs, opts.jobs, opts.threads_per_job, on_result=show)
    jobs = submit(configs, opts)
    for job, cfg in zip(jobs, configs):
        echo(f"job {job.job_id}  {run_label(cfg)}  log: {job.paths.stderr}")
    if not opts.wait:
        echo(f"submitted {len(jobs)} jobs; `tailprompt sweep FILE --status` shows their progress")
        return []
    reports = []
    for job, cfg in zip(jobs, configs):
        report = job_report(job, cfg)
        echo(f"{report.status:6} job {job.job_id}  {run_label(cfg)}" + (f"  {report.detail}" if report.detail
                                                                        else ""))
        reports.append(report)
    return reports
