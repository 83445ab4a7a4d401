"""`tailprompt sweep`: expand a grid of runs and run the missing ones, here or on a SLURM cluster."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from tailprompt.cli import UserError, user_errors

if TYPE_CHECKING:
    from tailprompt.engine.launch import LaunchOptions
    from tailprompt.engine.run_config import RunConfig

LAUNCHERS = ("local", "local-parallel", "submitit", "submitit-local")  # = engine.launch.LAUNCHERS (lazy import)
SUBMITIT_ONLY = ("partition", "account", "gpus_per_run", "cpus_per_run", "mem_gb", "timeout_min",
                 "array_parallelism", "log_dir")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of runs (methods x datasets x tau x seeds x any key), resumable",
        description="Expand FILE (keys: methods, grid, set, output_dir, init_from, slurm_*) into runs and run "
        "them here, N at a time, or as SLURM jobs (--launcher); runs whose result.json exists are skipped, runs "
        "being trained by another sweep or job are left to it (a lock in each run folder), and unfinished runs "
        "resume from their training checkpoint, so a killed sweep continues where it stopped when rerun. "
        "init_from {second: first} starts each run of a two-stage method (DPC) from the first method's run with "
        "the same settings.",
    )
    p.add_argument("file", help="sweep YAML, or the name of a packaged sweep (demo, cpt_table, tcpt_table)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")
    p.add_argument("--status", action="store_true",
                   help="list each run as done / running (job id) / failed (last error line, log) / pending")
    g = p.add_argument_group("launchers")
    g.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local: one run after another in this process (default); local-parallel: --jobs runs "
                   "at once on this machine; submitit: one SLURM job per run (a job array, needs sbatch); "
                   "submitit-local: the same jobs through submitit's local executor, on this machine")
    g.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="local-parallel: runs at once (default 2; each gets cores // N torch threads, and one GPU of "
                   "several round robin)")
    g.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads per run")
    g.add_argument("--no-wait", dest="wait", action="store_false",
                   help="submitit: return once the jobs are submitted (check them with --status)")
    s = p.add_argument_group("submitit / SLURM (any other sbatch parameter: slurm_<name> keys in FILE)")
    s.add_argument("--partition", help="SLURM partition")
    s.add_argument("--account", help="SLURM account")
    s.add_argument("--gpus-per-run", type=int, default=None, metavar="N", help="GPUs per job: 0 (default) or 1")
    s.add_argument("--cpus-per-run", type=int, default=None, metavar="N",
                   help="CPUs per job (also its torch threads unless --threads)")
    s.add_argument("--mem-gb", type=float, default=None, help="memory per job")
    s.add_argument("--timeout-min", type=int, default=None, metavar="MIN",
                   help="time limit per job (default 240); a job that hits it is requeued and resumes")
    s.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                   help="jobs of the array running at once (default 64)")
    s.add_argument("--log-dir", default=None, help="submitit's job folder with the logs (default OUTPUT_DIR/.submitit)")
    p.set_defaults(func=run)


def launch_options(args: argparse.Namespace, slurm: dict[str, Any], source: str) -> LaunchOptions:
    """LaunchOptions from the command line; an option the chosen launcher does not use is an error naming it."""
    from tailprompt.engine.launch import LaunchOptions

    submitit = args.launcher in ("submitit", "submitit-local")
    for name in SUBMITIT_ONLY:
        if getattr(args, name) is not None and not submitit:
            raise UserError(f"--{name.replace('_', '-')} applies to --launcher submitit / submitit-local only, "
                            f"not {args.launcher}")
    if not args.wait and not submitit:
        raise UserError(f"--no-wait applies to --launcher submitit / submitit-local only, not {args.launcher}")
    if args.jobs is not None and args.launcher != "local-parallel":
        raise UserError(f"--jobs applies to --launcher local-parallel only, not {args.launcher}")
    if slurm and not submitit:
        raise UserError(f"{source}: {sorted(slurm)[0]} applies to --launcher submitit only, not {args.launcher}")
    for name in ("jobs", "threads", "gpus_per_run", "cpus_per_run", "timeout_min", "array_parallelism"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "gpus_per_run" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be >= {0 if name == 'gpus_per_run' else 1}, got {value}")
    if args.mem_gb is not None and not (math.isfinite(args.mem_gb) and args.mem_gb > 0):
        raise UserError(f"--mem-gb must be a number > 0, got {args.mem_gb}")
    if (args.gpus_per_run or 0) > 1:
        raise UserError("--gpus-per-run: a sweep job trains one run in one process on one GPU; to train one run "
                        "on several GPUs, start it with torchrun (README, 'Running on a cluster')")
    given = {k: getattr(args, k) for k in SUBMITIT_ONLY if getattr(args, k) is not None}
    return LaunchOptions(launcher=args.launcher, jobs=args.jobs or 2, threads_per_job=args.threads,
                         wait=args.wait, slurm=dict(slurm), source=source, **given)


def run(args: argparse.Namespace) -> int:
    from tailprompt.engine.distributed import launched_by_torchrun
    from tailprompt.engine.sweep import expand, read_sweep, sweep_status

    if launched_by_torchrun():
        raise UserError("a sweep cannot run under torchrun (its runs are independent): use --launcher "
                        "local-parallel or submitit, or torchrun one `tailprompt train` at a time")
    with user_errors():
        spec = read_sweep(args.file)
        opts = launch_options(args, spec.slurm, args.file)
        configs = expand(spec, args.overrides)
        if args.dry_run or args.status:
            statuses = sweep_status(configs)
            for st in statuses:
                if args.dry_run:
                    print(f"{'done' if st.state == 'done' else 'todo'}  {st.run_dir}  {st.label}")
                else:
                    print(f"{st.state:8} {st.label}  {st.run_dir}" + (f"  [{st.detail}]" if st.detail else ""))
            if args.status:
                counts = {s: sum(st.state == s for st in statuses) for s in ("done", "running", "failed", "pending")}
                print(", ".join(f"{n} {s}" for s, n in counts.items()))
            return 0
        try:
            return launch(args, configs, opts)
        except KeyboardInterrupt:
            raise UserError(f"interrupted; rerun `tailprompt sweep {args.file}` with the same options to resume "
                            "(finished runs are skipped, unfinished ones continue from their checkpoints)") from None


def launch(args: argparse.Namespace, configs: list[RunConfig], opts: LaunchOptions) -> int:
    """Run the pending runs with the chosen launcher; exit code 1 when a run failed."""
    from tailprompt.engine.launch import run_launcher
    from tailprompt.engine.sweep import distinct_runs, sweep_reports, sweep_status
    from tailprompt.utils import configure_threads

    configs, folder_of = distinct_runs(configs)
    if args.launcher == "local":
        configure_threads(args.threads)
    elif args.launcher in ("submitit", "submitit-local"):
        pending = [cfg for cfg, st in zip(configs, sweep_status(configs)) if st.state not in ("done", "running")]
        print(f"{len(configs)} runs: {len(configs) - len(pending)} done or running elsewhere, "
              f"{len(pending)} to submit")
        if not pending:
            return 0
        configs = pending
    reports = run_launcher(configs, opts)
    if not reports:
        return 0
    if args.launcher in ("local", "local-parallel"):  # count every config of the sweep file
        reports = sweep_reports(reports, folder_of)
    counts = {s: sum(r.status == s for r in reports) for s in ("ran", "done", "busy", "failed")}
    print(f"{len(reports)} runs: {counts['ran']} run now, {counts['done']} already complete, "
          f"{counts['busy']} being trained elsewhere, {counts['failed']} failed")
    return 1 if counts["failed"] else 0
