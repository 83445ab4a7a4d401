"""Sweeps: a grid of runs (methods x any config keys), each skipped when its result exists.

Sweep file:

    methods: [coop, cpt_coop]        # presets or config files
    grid:                            # every combination of these dotted keys
      data.tau: [1.0, 0.25, 0.06]
      seed: [1, 2, 3]
    set:                             # fixed overrides for every run
      optim.epochs: 10
    output_dir: runs                 # optional, same as set: {output_dir: ...}
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
from tailprompt.engine.run import BackboneCache, RunOutcome, execute_run

log = logging.getLogger(__name__)


@dataclass
class SweepSpec:
    methods: list[str]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)


def packaged_sweep(name: str) -> Path:
    """A sweep shipped in `tailprompt/configs/sweeps/` (`demo`, `cpt_table`, `tcpt_table`, ...)."""
    return Path(str(resources.files("tailprompt") / "configs" / "sweeps" / f"{name}.yaml"))


def read_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep file; a bare name that is no file is looked up among the packaged sweeps."""
    if not Path(path).exists() and Path(path).suffix == "" and packaged_sweep(str(path)).is_file():
        path = packaged_sweep(str(path))
    data = load_yaml(path)
    unknown = set(data) - {"methods", "grid", "set", "output_dir"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; valid: methods, grid, set, output_dir")
    methods = data.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"{path}: 'methods' must be a non-empty list of presets or config files")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map dotted keys to non-empty lists")
    fixed = dict(data.get("set") or {})
    if "output_dir" in data:
        fixed["output_dir"] = data["output_dir"]
    return SweepSpec([str(m) for m in methods], grid, fixed)


def override_strings(values: dict[str, Any]) -> list[str]:
    """`{"data.tau": 0.06}` -> `["data.tau=0.06"]` (values rendered as YAML flow scalars)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in values.items()]


def expand(spec: SweepSpec, extra: Sequence[str] = ()) -> list[RunConfig]:
    """Every run config of the sweep, methods outermost (so a killed sweep leaves whole methods done)."""
    keys = list(spec.grid)
    configs = []
    for method in spec.methods:
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            overrides = override_strings(spec.fixed) + override_strings(dict(zip(keys, combo))) + list(extra)
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
