"""Sweeps: a grid of runs (methods x any config keys), each skipped when its result exists.

Sweep file:

    methods: [coop, cpt_coop]        # presets or config files
    grid:                            # every combination of these dotted keys
      data.tau: [1.0, 0.25, 0.06]
      seed: [1, 2, 3]
    set:                             # fixed overrides for every run
      optim.epochs: 10
    output_dir: runs                 # optional, same as set: {output_dir: ...}
    init_from:                       # optional: two-stage methods (DPC) start from an earlier method's run
      dpc_coop: coop                 #   with the same grid values and overrides (init.from_run set for you)

A method named in `init_from` must come after its first stage in `methods`, so that a sweep run in order
finishes the first stage before the second starts from it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from tailprompt.config import ConfigError, load_yaml
from tailprompt.engine.config import RunConfig
from tailprompt.engine.resolve import resolve_config
from tailprompt.engine.run import BackboneCache, RunOutcome, execute_run, run_directory

log = logging.getLogger(__name__)


@dataclass
class SweepSpec:
    methods: list[str]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    init_from: dict[str, str] = field(default_factory=dict)  # second-stage method -> the method it starts from


def packaged_sweep(name: str) -> Path:
    """A sweep shipped in `tailprompt/configs/sweeps/` (`demo`, `cpt_table`, `tcpt_table`, ...)."""
    return Path(str(resources.files("tailprompt") / "configs" / "sweeps" / f"{name}.yaml"))


def read_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep file; a bare name that is no file is looked up among the packaged sweeps."""
    if not Path(path).exists() and Path(path).suffix == "" and packaged_sweep(str(path)).is_file():
        path = packaged_sweep(str(path))
    data = load_yaml(path)
    unknown = set(data) - {"methods", "grid", "set", "output_dir", "init_from"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; valid: methods, grid, set, output_dir, "
                          "init_from")
    methods = data.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"{path}: 'methods' must be a non-empty list of presets or config files")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map dotted keys to non-empty lists")
    fixed = dict(data.get("set") or {})
    if "output_dir" in data:
        fixed["output_dir"] = data["output_dir"]
    methods = [str(m) for m in methods]
    return SweepSpec(methods, grid, fixed, stage_order(data.get("init_from"), methods, str(path)))


def stage_order(init_from: Any, methods: list[str], where: str) -> dict[str, str]:
    """`init_from` checked: every second stage and its first stage are sweep methods, the first one earlier."""
    if init_from is None:
        return {}
    if not isinstance(init_from, dict):
        raise ConfigError(f"{where}: 'init_from' must map a method to the method its runs start from")
    for second, first in init_from.items():
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
            overrides = override_strings(spec.fixed) + override_strings(dict(zip(keys, combo))) + list(extra)
            if method in spec.init_from:
                backbones = backbones or BackboneCache()
                first = resolve_config(spec.init_from[method], overrides)
                first_dir = run_directory(first, backbones.get(first.backbone))
                overrides = [*overrides, *override_strings({"init.from_run": str(first_dir)})]
            configs.append(resolve_config(method, overrides))
    return configs


def run_all(
    configs: Sequence[RunConfig],
    progress: bool = True,
    on_result: Callable[[RunConfig, RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run configs in order, skipping complete ones; safe to kill and rerun at any moment."""
    backbones = BackboneCache()
    outcomes = []
    # Log lines go through tqdm.write so they do not tear the progress bar.
    with logging_redirect_tqdm():
        bar = tqdm(configs, desc="sweep", unit="run", disable=not progress)
        for cfg in bar:
            bar.set_postfix_str(f"{cfg.method or cfg.learner.name} tau={cfg.data.tau} seed={cfg.seed}")
            outcome = execute_run(cfg, backbones)
            outcomes.append(outcome)
            if on_result:
                on_result(cfg, outcome)
    return outcomes
