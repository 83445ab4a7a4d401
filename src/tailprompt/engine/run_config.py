"""The run config: one typed tree, resolved from defaults <- preset YAML <- user YAML <- `--set`.

The learner, objective and hook sections are typed here too: each names a registered component and the
rest of its keys are that component's own config dataclass, built once when the config is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tailprompt.data.augment import Augment
from tailprompt.registry import Registry
from tailprompt.schema import ConfigError, from_dict, to_dict


@dataclass
class BackboneConfig:
    name: str = "embedded"  # open_clip architecture, "tiny-vit", "embedded" or "embedded-vit"
    weights: str | None = None  # local file or open_clip pretrained tag; None = the name's default
    quick_gelu: Literal["auto"] | bool = "auto"  # true / false force QuickGELU; auto detects it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Tower matmuls: bf16 autocast on CUDA and on CPUs with AMX / AVX512-BF16, fp32 elsewhere ("auto");
    # prompts, optimiser, objectives, metrics and cached features stay fp32. "fp32" is the parity path.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Training views of the image preprocessing: Dassl's crop + flip, or its RandAugment (CoPrompt's setting).


@dataclass
class DataConfig:
    name: str = "world"  # the embedded world's default benchmark (see `tailprompt list datasets`)
    root: str | None = None  # folder holding the dataset folders (CoOp's DATA/)
    shots: int = 16  # at most this many training images per class
    tau: float = 1.0  # imbalance ratio min/max shots
    profile: Literal["exp", "step", "counts"] = "exp"
    counts_file: str | None = None  # JSON {class_name: n} for profile=counts
    fewshot_ids: str | None = None  # JSON of a previous run's ids to reuse exactly
    cache: bool = True  # train/eval from cached image features (frozen image tower only)
    cache_dir: str | None = None  # default ~/.cache/tailprompt
    n_views: int = 4  # augmented training views cached per image
    batch_size_eval: int = 256
    num_workers: int = 0  # processes decoding images (cache fill, exact mode, MaPLe); results do not change
    descriptions: str | None = None  # JSON {classname: [sentence, ...]} (CoPrompt's gpt_file format), or that folder
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific reader options
    # Hand template per dataset name, overriding the reader's (CoOp's) table for the run's dataset and its
    # transfer targets: methods whose reference uses its own table (DeKg/KgCoOp's DTD, ProGrad's) carry it
    # in their preset. `options.template` / `protocol.target_options.template` still win.
    templates: dict[str, str] = field(default_factory=dict)
    # training augmentation {crop_scale: [min, max], flip: bool}; None: the dataset's default (the CoOp
    # recipe, scale 0.08-1 + flip, for the real datasets; a gentler crop for the embedded world)
    augment: Augment | None = None


@dataclass
class ProtocolConfig:
    name: str = "base_to_new"  # a registered protocol: base_to_new | all_classes | cross_dataset | ...
    targets: list[str] = field(default_factory=list)  # target datasets (cross_dataset, domain_generalization)
    target_options: dict[str, Any] = field(default_factory=dict)  # reader options for every target dataset


@dataclass
class OptimConfig:
    name: Literal["sgd"] = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 200
    batch_size: int = 32
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    max_steps: int | None = None  # optional cap on steps per run (smoke tests)
    checkpoint_every_s: float | None = 60.0  # save a resumable checkpoint after an epoch when this many
    # seconds passed since the last save (0: every epoch, null: never); does not change results


@dataclass
class EvalConfig:
    temperature: float | None = None  # fixed post-hoc temperature (TCPT uses 1.16), None = off
    fit_temperature: bool = True  # fit T on held-out data and report ECE after scaling
    # how: "lbfgs" the NLL optimum; "dac_sgd" the DAC repository's recipe (a log scale from ln 100, SGD lr 0.05
    # with Dassl's warm-up + cosine over 20 epochs, batches of 100), which stops short of the optimum
    temperature_fit: Literal["lbfgs", "dac_sgd"] = "lbfgs"
    dac: bool = True  # DAC on new classes (base_to_new)
    dac_k: int = 5
    ece_bins: int = 10
    geometry: bool = True
    # NC1's global mean: over all test features (the reference implementations) or over the class means
    nc1_global_mean: Literal["samples", "class_means"] = "samples"
    # head / medium / tail: "thirds" sorts the classes by shots and cuts them in 3 (the papers);
    # "thresholds" uses the long-tail benchmarks' > 100 / 20-100 / < 20 training images
    groups: Literal["thirds", "thresholds"] = "thirds"


def _component(data: Any, where: str, registry: Registry[Any]) -> tuple[str, Any, dict[str, Any]]:
    """(name, registered entry, other keys) of a `{name: ..., ...}` section."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a 'name', got {type(data).__name__}")
    if "name" not in data:
        raise ConfigError(f"{where}: missing 'name' (the {registry.kind}; see `tailprompt list`)")
    name = str(data["name"])
    try:
        entry = registry.get(name)
    except KeyError as e:
        raise ConfigError(f"{where}.name: {e.args[0]}") from None
    return name, entry, {k: v for k, v in data.items() if k != "name"}


def _learners() -> Registry[Any]:
    from tailprompt.prompts import LEARNERS

    return LEARNERS


def _hooks() -> Registry[Any]:
    from tailprompt.hooks import HOOKS

    return HOOKS


def _objectives() -> Registry[Any]:
    from tailprompt.objectives import OBJECTIVES

    return OBJECTIVES


@dataclass
class ComponentConfig:
    """A section naming a registered component (`name`) whose other keys are the component's own config
    dataclass (`options`, `None` = its defaults). Subclasses say which registry names it."""

    name: str
    options: Any = None

    @staticmethod
    def registry() -> Registry[Any]:
        raise NotImplementedError

    def __post_init__(self) -> None:
        if self.options is None:
            self.options = type(self).from_data({"name": self.name}, type(self).__name__).options

    @classmethod
    def from_data(cls, data: Any, where: str) -> Any:
        name, entry, rest = _component(data, where, cls.registry())
        return cls(name, from_dict(entry.config_cls, rest, where))

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, **to_dict(self.options)}


@dataclass
class LearnerConfig(ComponentConfig):
    """`learner:` — a registered learner's name plus its own config dataclass (`options`)."""

    name: str = "coop"
    registry = staticmethod(_learners)


@dataclass
class HookConfig(ComponentConfig):
    """One `hooks:` entry — a registered training hook (e.g. an epoch-end weight average) and its config."""

    registry = staticmethod(_hooks)


@dataclass
class ObjectiveConfig:
    """One `objectives:` entry — a registered objective, its per-term weights and its config dataclass."""

    name: str = "cross_entropy"
    weights: dict[str, float] = field(default_factory=dict)  # every term's weight (defaults filled in)
    options: Any = None

    def __post_init__(self) -> None:
        if self.options is None:
            resolved = ObjectiveConfig.from_data({"name": self.name, "weights": self.weights}, "objectives")
            self.weights, self.options = resolved.weights, resolved.options

    @classmethod
    def from_data(cls, data: Any, where: str) -> ObjectiveConfig:
        name, spec, rest = _component(data, where, _objectives())
        weights = dict(spec.default_weights)
        given = rest.pop("weights", None) or {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{where}.weights: expected a mapping term -> number, got {given!r}")
        for term, w in given.items():
            if term not in weights:
                raise ConfigError(f"{where}.weights: unknown term {term!r} of objective {name!r}; "
                                  f"terms: {', '.join(weights)}")
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise ConfigError(f"{where}.weights.{term}: expected a number, got {w!r}")
            weights[term] = float(w)
        return cls(name, weights, from_dict(spec.config_cls, rest, where))

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, "weights": dict(self.weights), **to_dict(self.options)}


@dataclass
class InitConfig:
    from_run: str | None = None  # a finished run folder whose prompts this run starts from (DPC stage 2)
    # Or a preset (or config file) whose run, with this run's backbone, data, protocol, eval settings, seed,
    # output folder and optim.max_steps (its schedule stays the preset's), this run starts from; that run is
    # made first when missing (two stages in one sweep). `from_run` wins when both are set.
    from_preset: str | None = None


@dataclass
class RunConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    objectives: list[ObjectiveConfig] = field(default_factory=lambda: [ObjectiveConfig()])
    hooks: list[HookConfig] = field(default_factory=list)
    init: InitConfig = field(default_factory=InitConfig)
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
    # a tiny T underflows to 0 in float32 (NaN ECE); real temperatures are near 1
    ("eval.temperature", lambda v: 1e-6 <= v <= 1e6, "a number in [1e-6, 1e6] or null"),
    ("eval.dac_k", lambda v: v >= 1, "an integer >= 1"),
    ("eval.ece_bins", lambda v: v >= 1, "an integer >= 1"),
    ("seed", lambda v: 0 <= v < 2**63, "an integer in 0..2**63-1"),
    # an empty path would quietly mean the current folder
    ("output_dir", lambda v: bool(v.strip()), "a folder path, not empty"),
    ("data.root", lambda v: bool(v.strip()), "a folder path, or null for the default"),
    ("data.cache_dir", lambda v: bool(v.strip()), "a folder path, or null for the default"),
)
# Learner and objective options are checked by name: counts and sizes must be >= 1, other integers >= 0.
_COUNT_PREFIXES = ("n_", "num_")
_COUNT_SUFFIXES = ("_size", "_depth")


def validate_ranges(cfg: RunConfig) -> None:
    """Check that every numeric config value makes sense; the first that does not is a `ConfigError`
    naming its key, the value and what was expected (raised at resolve time, before any work)."""
    from tailprompt.schema import ConfigError, to_dict

    plain = to_dict(cfg)
    for key, accepts, expected in RANGE_RULES:
        value = _lookup(plain, key)
        if value is None:
            continue
        if not (accepts(value) if isinstance(value, str) else _is_finite(value) and accepts(value)):
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
