"""Sweeps: a grid of runs (methods x any config keys), each skipped when its result exists.

Sweep file:

    methods: [coop, cpt_coop]        # presets or config files
    grid:                            # every combination of these dotted keys
      data.tau: [1.0, 0.25, 0.06]
      seed: [1, 2, 3]
    set:                             # fixed overrides for every run
      optim.epochs: 10
    output_dir: runs                 # optional, same as set: {output_dir: ...}
    slurm_qos: high                  # optional: any submitit `slurm_*` parameter for --launcher submitit
    init_from:                       # optional: two-stage methods (DPC) start from an earlier method's run
      dpc_coop: coop                 #   with the same grid values and overrides (init.from_run set for you)

A method named in `init_from` must come after its first stage in `methods`: a sweep run in order finishes
the first stage before the second starts from it (with parallel launchers a second stage whose first stage
is not finished yet fails with that message; rerunning the sweep completes it).

Every run holds a lock in its folder while it trains (`run.lock`, see `tailprompt.locks`), so two sweeps
on one output folder, or a resubmitted job array, never train a run twice; a run that fails leaves
`error.json` (its last error line and log) for `tailprompt sweep FILE --status`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from tailprompt.engine.resolve import check_first_stage, resolve_config
from tailprompt.engine.run import CHECKPOINT, BackboneCache, execute_run, is_finished, run_directory
from tailprompt.engine.run_config import RunConfig
from tailprompt.files import FileReadError
from tailprompt.locks import FileLock, current_job_id, describe, read_lock, stale_reason, this_owner
from tailprompt.schema import ConfigError, load_yaml
from tailprompt.utils import write_json_atomic

log = logging.getLogger(__name__)

RUN_LOCK = "run.lock"  # held while a run trains
RUN_ERROR = "error.json"  # left by a run that failed: {"error": last line, "log": path, "job_id": ...}


@dataclass
class SweepSpec:
    methods: list[str]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)  # extra submitit `slurm_*` parameters
    init_from: dict[str, str] = field(default_factory=dict)  # second-stage method -> the method it starts from
    source: str = ""  # the sweep file, named by errors in the runs it expands to


def packaged_sweep(name: str) -> Path:
    """A sweep shipped in `tailprompt/configs/sweeps/` (`demo`, `cpt_table`, `tcpt_table`, ...)."""
    return Path(str(resources.files("tailprompt") / "configs" / "sweeps" / f"{name}.yaml"))


def read_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep file; a bare name that is no file is looked up among the packaged sweeps."""
    if not Path(path).exists() and Path(path).suffix == "" and packaged_sweep(str(path)).is_file():
        path = packaged_sweep(str(path))
    data = load_yaml(path)
    unknown = {k for k in data if not str(k).startswith("slurm_")} - {"methods", "grid", "set", "output_dir",
                                                                      "init_from"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; valid: methods, grid, set, output_dir, "
                          "init_from, slurm_* (submitit parameters)")
    methods = data.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"{path}: 'methods' must be a non-empty list of presets or config files")
    for i, method in enumerate(methods):
        if not isinstance(method, str) or not method.strip():
            raise ConfigError(f"{path}: methods[{i}]: expected a preset name or a config file, got {method!r}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map dotted keys to non-empty lists")
    for key in grid:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{path}: grid: expected dotted config keys (e.g. data.tau), got {key!r}")
    fixed = data.get("set") or {}
    if not isinstance(fixed, dict) or any(not isinstance(k, str) or not k.strip() for k in fixed):
        raise ConfigError(f"{path}: 'set' must map dotted config keys to values (e.g. optim.epochs: 10), got "
                          f"{fixed!r}")
    fixed = dict(fixed)
    if "output_dir" in data:
        fixed["output_dir"] = data["output_dir"]
    slurm = {str(k): v for k, v in data.items() if str(k).startswith("slurm_")}
    return SweepSpec(methods, grid, fixed, slurm, stage_order(data.get("init_from"), methods, str(path)), str(path))


def stage_order(init_from: Any, methods: list[str], where: str) -> dict[str, str]:
    """`init_from` checked: every second stage and its first stage are sweep methods, the first one earlier."""
    if init_from is None:
        return {}
    if not isinstance(init_from, dict):
        raise ConfigError(f"{where}: 'init_from' must map a method to the method its runs start from")
    for second, first in init_from.items():
        if second == first:
            raise ConfigError(f"{where}: init_from {second}: {first}: a method cannot start from its own runs; name "
                              f"its first stage")
        if second not in methods or first not in methods or methods.index(first) > methods.index(second):
            raise ConfigError(f"{where}: init_from {second}: {first} needs both in 'methods', {first!r} before "
                              f"{second!r} (the first stage runs first)")
    return {str(k): str(v) for k, v in init_from.items()}


def override_strings(values: dict[str, Any]) -> list[str]:
    """`{"data.tau": 0.06}` -> `["data.tau=0.06"]` (values rendered as YAML flow scalars)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in values.items()]


def expand(spec: SweepSpec, extra: Sequence[str] = (), backbones: BackboneCache | None = None) -> list[RunConfig]:
    """Every run config of the sweep, methods outermost (so a killed sweep leaves whole methods done).

    A second-stage run (`spec.init_from`) gets `init.from_run` = the folder of its first stage's run with the
    same overrides; finding that folder loads the backbone (its identity is part of the run id).
    """
    keys = list(spec.grid)
    configs = []
    for method in spec.methods:
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            values = dict(zip(keys, combo))
            overrides = override_strings(spec.fixed) + override_strings(values) + list(extra)
            try:
                if method in spec.init_from:
                    backbones = backbones or BackboneCache()
                    first = resolve_config(spec.init_from[method], overrides)
                    first_dir = run_directory(first, backbones.get(first.backbone))
                    overrides = [*overrides, *override_strings({"init.from_run": str(first_dir)})]
                cfg = resolve_config(method, overrides)
                if method in spec.init_from:
                    check_first_stage(cfg, first, f"init_from {method}: {spec.init_from[method]}")
                configs.append(cfg)
            except ConfigError as e:
                if not spec.source:
                    raise
                where = " ".join(f"{k}={v}" for k, v in values.items())
                raise ConfigError(f"{spec.source}: method {method!r}{' at ' + where if where else ''}: {e}") from None
    return configs


def distinct_runs(configs: Sequence[RunConfig]) -> tuple[list[RunConfig], list[int]]:
    """One config per run folder, in order, and for every config the index of its folder's config.

    Configs that land in the same folder (a method that trains nothing, swept over tau x seed) are one
    run, so parallel launchers never start it twice.
    """
    backbones, first, runs, index = BackboneCache(), {}, [], []
    for cfg in configs:
        run_dir = run_directory(cfg, backbones.get(cfg.backbone))
        if run_dir not in first:
            first[run_dir] = len(runs)
            runs.append(cfg)
        index.append(first[run_dir])
    return runs, index


def sweep_reports(reports: Sequence[JobReport], index: Sequence[int]) -> list[JobReport]:
    """The report of every config of the sweep: a config sharing a folder with an earlier one found it done."""
    seen: set[int] = set()
    out = []
    for i in index:
        report = reports[i]
        if i in seen and report.status == "ran":
            report = JobReport(report.run_dir, "done")
        seen.add(i)
        out.append(report)
    return out


def run_label(cfg: RunConfig) -> str:
    return f"{cfg.method or cfg.learner.name} {cfg.data.name} tau={cfg.data.tau} seed={cfg.seed}"


@dataclass(frozen=True)
class JobReport:
    """What one attempt at a run did: trained it, found it done, found it held by another job, or failed."""

    run_dir: str
    status: Literal["ran", "done", "busy", "failed"]
    detail: str = ""  # the lock's owner (busy) or the last error line (failed)


def last_error_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:500]


def run_locked(
    cfg: RunConfig, backbones: BackboneCache, log_path: str | None = None, progress: bool = False
) -> JobReport:
    """Train `cfg` unless it is complete or another process holds its lock; a failure leaves `error.json`."""
    run_dir = run_directory(cfg, backbones.get(cfg.backbone))
    if is_finished(run_dir):  # a corrupt result.json fails this run, naming the file
        return JobReport(str(run_dir), "done")
    lock = FileLock(run_dir / RUN_LOCK)
    if not lock.acquire():
        state = read_lock(lock.path)
        return JobReport(str(run_dir), "busy", describe(state.owner if state else None))
    try:
        if (run_dir / "result.json").is_file():  # finished by the previous holder just before we took over
            return JobReport(str(run_dir), "done")
        (run_dir / RUN_ERROR).unlink(missing_ok=True)
        try:
            execute_run(cfg, backbones, progress=progress)  # per-epoch bar under the sweep's
        except Exception as e:
            write_json_atomic(run_dir / RUN_ERROR, {"error": last_error_line(e), "log": log_path,
                                                    "job_id": current_job_id(), "time": time.time()})
            raise
    finally:
        lock.release()
    return JobReport(str(run_dir), "ran")


def run_all(
    configs: Sequence[RunConfig],
    progress: bool = True,
    on_result: Callable[[RunConfig, JobReport], None] | None = None,
    log_path: str | None = None,
) -> list[JobReport]:
    """Run configs in order in this process, skipping complete ones and ones another process is training.

    Safe to kill and rerun at any moment. A run that fails is reported (and leaves `error.json`); the
    sweep goes on with the next one.
    """
    backbones = BackboneCache()
    reports = []
    # Log lines go through tqdm.write so they do not tear the progress bar.
    with logging_redirect_tqdm():
        bar = tqdm(configs, desc="sweep", unit="run", disable=not progress)
        for cfg in bar:
            bar.set_postfix_str(f"{cfg.method or cfg.learner.name} tau={cfg.data.tau} seed={cfg.seed}")
            run_dir = run_directory(cfg, backbones.get(cfg.backbone))
            try:
                report = run_locked(cfg, backbones, log_path, progress=progress)
            except Exception as e:
                report = JobReport(str(run_dir), "failed", last_error_line(e))
                log.error("run failed: %s: %s (%s)", run_label(cfg), report.detail, report.run_dir)
            if report.status == "busy":
                log.info("skipping %s: being trained by %s", run_label(cfg), report.detail)
            reports.append(report)
            if on_result:
                on_result(cfg, report)
    return reports


RunState = Literal["done", "running", "failed", "pending"]


@dataclass(frozen=True)
class RunStatus:
    run_dir: Path
    label: str
    state: RunState
    detail: str = ""


def run_state(run_dir: Path) -> tuple[RunState, str]:
    """done / running (who, heartbeat) / failed (error line, log) / pending (with a note on what it resumes).

    A `result.json` that does not read as a run record (truncated, edited) is `failed`, naming it.
    """
    if (run_dir / "result.json").is_file():
        try:
            is_finished(run_dir)
        except FileReadError as e:
            return "failed", str(e)
        return "done", ""
    lock = read_lock(run_dir / RUN_LOCK)
    stale = None
    if lock is not None:
        stale = stale_reason(lock, FileLock(run_dir / RUN_LOCK).stale_after_s, this_owner())
        if stale is None:
            return "running", f"{describe(lock.owner)}, heartbeat {lock.heartbeat_age_s:.0f} s ago"
    if (run_dir / RUN_ERROR).is_file():
        try:
            error = json.loads((run_dir / RUN_ERROR).read_bytes().decode("utf-8", "replace"))
        except (OSError, ValueError):
            error = None
        if not isinstance(error, dict):
            return "failed", f"(its {RUN_ERROR} is unreadable)"
        return "failed", f"{error.get('error', '?')} (log: {error.get('log') or 'none'})"
    notes = []
    if (run_dir / CHECKPOINT).is_file():
        notes.append("resumes from its training checkpoint")
    if stale is not None:
        notes.append(f"stale lock of {describe(lock.owner if lock else None)}: {stale}")
    return "pending", "; ".join(notes)


def sweep_status(configs: Sequence[RunConfig]) -> list[RunStatus]:
    backbones = BackboneCache()
    statuses = []
    for cfg in configs:
        run_dir = run_directory(cfg, backbones.get(cfg.backbone))
        state, detail = run_state(run_dir)
        statuses.append(RunStatus(run_dir, run_label(cfg), state, detail))
    return statuses
