"""The run config: one typed tree, resolved from defaults <- preset YAML <- user YAML <- `--set`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class BackboneConfig:
    name: str = "embedded"  # open_clip architecture, "tiny-vit" or "embedded"
    weights: str | None = None  # local file or open_clip pretrained tag; None = the name's default
    quick_gelu: str = "auto"  # auto | true | false
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class DataConfig:
    name: str = "world"  # the embedded world's default benchmark (see `tailprompt list datasets`)
    root: str | None = None  # folder holding the dataset folders (CoOp's DATA/)
    shots: int = 16  # at most this many training images per class
    tau: float = 1.0  # imbalance ratio min/max shots
    profile: str = "exp"  # exp | step | counts
    counts_file: str | None = None  # JSON {class_name: n} for profile=counts
    fewshot_ids: str | None = None  # JSON of a previous run's ids to reuse exactly
    cache: bool = True  # train/eval from cached image features (frozen image tower only)
    cache_dir: str | None = None  # default ~/.cache/tailprompt
    n_views: int = 4  # augmented training views cached per image
    batch_size_eval: int = 256
    num_workers: int = 0  # processes decoding images (cache fill, exact mode, MaPLe); results do not change
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific reader options


@dataclass
class ProtocolConfig:
    name: str = "base_to_new"  # base_to_new | cross_dataset | domain_generalization | all_classes
    targets: list[str] = field(default_factory=list)  # target datasets (cross_dataset, domain_generalization)
    target_options: dict[str, Any] = field(default_factory=dict)  # reader options for every target dataset


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 200
    batch_size: int = 32
    scheduler: str = "cosine"  # cosine | constant
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    max_steps: int | None = None  # optional cap on steps per run (smoke tests)
    checkpoint_every_s: float | None = 60.0  # save a resumable checkpoint after an epoch when this many
    # seconds passed since the last save (0: every epoch, null: never); does not change results


@dataclass
class EvalConfig:
    temperature: float | None = None  # fixed post-hoc temperature (TCPT uses 1.16), None = off
    fit_temperature: bool = True  # fit T on held-out data and report ECE after scaling
    dac: bool = True  # DAC on new classes (base_to_new)
    dac_k: int = 5
    ece_bins: int = 10
    geometry: bool = True
    # head / medium / tail: "thirds" sorts the classes by shots and cuts them in 3 (the papers);
    # "thresholds" uses the long-tail benchmarks' > 100 / 20-100 / < 20 training images
    groups: Literal["thirds", "thresholds"] = "thirds"


@dataclass
class RunConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    learner: dict[str, Any] = field(default_factory=lambda: {"name": "coop"})
    objectives: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "cross_entropy"}])
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 1
    output_dir: str = "runs"
    method: str = ""  # preset name (tables group rows by it)
    description: str = ""  # one line shown by `tailprompt list`


# ------------------------------------------------------------------------------------------ value ranges

# (dotted key, accepts the value, what is expected); None values are skipped (optional keys).
RANGE_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.shots", lambda v: v >= 1, "an integer >= 1"),
    ("data.tau", lambda v: 0 < v <= 1, "a number in (0, 1] (imbalance ratio min/max)"),
    ("data.n_views", lambda v: v >= 1, "an integer >= 1"),
    ("data.batch_size_eval", lambda v: v >= 1, "an integer >= 1"),
    ("data.num_workers", lambda v: v >= 0, "an integer >= 0"),
    ("optim.lr", lambda v: v > 0, "a number > 0"),
    ("optim.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("optim.weight_decay", lambda v: v >= 0, "a number >= 0"),
    ("optim.epochs", lambda v: v >= 0, "an integer >= 0"),
    ("optim.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("optim.warmup_epochs", lambda v: v >= 0, "an integer >= 0"),
    ("optim.warmup_lr", lambda v: v >= 0, "a number >= 0"),
    ("optim.max_steps", lambda v: v >= 1, "an integer >= 1 or null"),
    ("optim.checkpoint_every_s", lambda v: v >= 0, "a number >= 0 or null"),
    ("eval.temperature", lambda v: v > 0, "a number > 0 or null"),
    ("eval.dac_k", lambda v: v >= 1, "an integer >= 1"),
    ("eval.ece_bins", lambda v: v >= 1, "an integer >= 1"),
    ("seed", lambda v: v >= 0, "an integer >= 0"),
)
# Learner and objective options are checked by name: counts and sizes must be >= 1, other integers >= 0.
_COUNT_PREFIXES = ("n_", "num_")
_COUNT_SUFFIXES = ("_size", "_depth", "_per_call")


def validate_ranges(cfg: RunConfig) -> None:
    """Check that every numeric config value makes sense; the first that does not is a `ConfigError`
    naming its key, the value and what was expected (raised at resolve time, before any work)."""
    from tailprompt.config import ConfigError, to_dict

    plain = to_dict(cfg)
    for key, accepts, expected in RANGE_RULES:
        value = _lookup(plain, key)
        if value is None:
            continue
        if not _is_finite(value) or not accepts(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    problems = _option_problems(plain.get("learner"), "learner")
    for i, entry in enumerate(plain.get("objectives") or []):
        problems += _option_problems(entry, f"objectives[{i}]")
    if problems:
        raise ConfigError(problems[0])


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _option_problems(node: Any, where: str) -> list[str]:
    """Range problems in a learner / objective section: NaN or infinite numbers, negative weights,
    counts and sizes below 1, negative integers."""
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _option_problems(v, f"{where}.{k}")
        return out
    if isinstance(node, list):
        for i, v in enumerate(node):
            out += _option_problems(v, f"{where}[{i}]")
        return out
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return out
    name = where.rsplit(".", 1)[-1]
    if not math.isfinite(node):
        out.append(f"{where}: expected a finite number, got {node!r}")
    elif ".weights." in where and node < 0:
        out.append(f"{where}: expected a weight >= 0, got {node!r}")
    elif isinstance(node, int) and (name.startswith(_COUNT_PREFIXES) or name.endswith(_COUNT_SUFFIXES)) and node < 1:
        out.append(f"{where}: expected an integer >= 1, got {node!r}")
    elif isinstance(node, int) and node < 0:
        out.append(f"{where}: expected an integer >= 0, got {node!r}")
    return out
