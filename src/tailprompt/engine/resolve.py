"""Config resolution: dataclass defaults <- method preset <- user file <- `--set` overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from tailprompt.config import ConfigError, from_dict, load_yaml, merge, parse_override, set_path, to_dict
from tailprompt.engine.config import RunConfig, validate_ranges
from tailprompt.utils import resolve_device, stable_hash

PRESET_PACKAGE = "tailprompt.configs.methods"


def preset_dir() -> Path:
    return Path(str(resources.files("tailprompt") / "configs" / "methods"))


def list_presets() -> list[str]:
    """Names of the method presets shipped with the package (file stems)."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return path


def names_a_file(file_or_preset: str) -> bool:
    """A config path has a folder separator or a YAML suffix; anything else is a preset name, even when a
    file or folder of that name happens to exist in the working folder."""
    return "/" in file_or_preset or "\\" in file_or_preset or Path(file_or_preset).suffix in (".yaml", ".yml")


def config_source(file_or_preset: str) -> tuple[dict[str, Any], str]:
    """Plain data of a config file or preset name, and the method name it stands for.

    A user file may name a preset under `preset:`; its other keys override that preset.
    """
    path = Path(file_or_preset)
    if names_a_file(file_or_preset):
        data = load_yaml(path)
        base_name = data.pop("preset", None)
        if base_name is not None:
            base, method = config_source(str(base_name))
            data = merge(base, data)
            data.setdefault("method", method)
        return data, str(data.get("method") or path.stem)
    data = load_yaml(preset_path(file_or_preset))
    data.setdefault("method", file_or_preset)
    return data, file_or_preset


def resolve_config(file_or_preset: str | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Resolve a run config; unknown keys anywhere are a `ConfigError` naming the key."""
    data: dict[str, Any] = {}
    if file_or_preset:
        data, _ = config_source(file_or_preset)
    data = to_dict(data)
    for text in overrides:
        path, value = parse_override(text)
        set_path(data, path, value)
    adopt_sampling_of_reused_ids(data)
    cfg = from_dict(RunConfig, data)
    validate_components(cfg)
    validate_ranges(cfg)
    resolve_device(cfg.backbone.device)  # a device this machine lacks fails here, before any work
    return cfg


def adopt_sampling_of_reused_ids(data: dict[str, Any]) -> None:
    """With `data.fewshot_ids` pointing at a run's result.json, record that run's `tau` and `shots`.

    The reused ids are the sample, so the run is that sample's tau (it lands in that tau's column); a
    `data.tau` / `data.shots` given explicitly must agree with the file.
    """
    section = data.get("data")
    source = section.get("fewshot_ids") if isinstance(section, dict) else None
    if not isinstance(source, str) or not source:
        return
    from tailprompt.files import read_json

    record = read_json(source, "fewshot ids file")
    if not isinstance(record, dict):
        return  # read_fewshot_ids reports the shape error with the file's name
    for key in ("tau", "shots"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        given = section.get(key)
        if given is not None and given != value:
            raise ConfigError(f"data.{key}={given} disagrees with data.fewshot_ids {source} (a sample with "
                              f"{key}={value:g}); leave data.{key} out or set it to {value:g}")
        section[key] = value


def validate_components(cfg: RunConfig) -> None:
    """Check the learner and objective sections against their registered config dataclasses."""
    from tailprompt.objectives import OBJECTIVES
    from tailprompt.prompts import LEARNERS

    learner_config(cfg)  # raises on bad keys
    for i, entry in enumerate(cfg.objectives):
        where = f"objectives[{i}]"
        if "name" not in entry:
            raise ConfigError(f"{where}: missing 'name'; available: {', '.join(OBJECTIVES.names())}")
        objective_parts(entry, where)
    if cfg.learner.get("name") not in LEARNERS:
        raise ConfigError(f"learner.name: unknown learner {cfg.learner.get('name')!r}; "
                          f"available: {', '.join(LEARNERS.names())}")


def learner_config(cfg: RunConfig) -> Any:
    """The learner's typed config built from `cfg.learner` (minus `name`)."""
    from tailprompt.prompts import LEARNERS

    name = cfg.learner.get("name")
    try:
        spec = LEARNERS.get(str(name))
    except KeyError as e:
        raise ConfigError(f"learner.name: {e.args[0]}") from None
    rest = {k: v for k, v in cfg.learner.items() if k != "name"}
    return from_dict(spec.config_cls, rest, "learner")


def objective_parts(entry: dict[str, Any], where: str) -> tuple[Any, Any, dict[str, float]]:
    """(spec, typed config, per-term weights) of one objective entry."""
    from tailprompt.objectives import OBJECTIVES

    try:
        spec = OBJECTIVES.get(str(entry["name"]))
    except KeyError as e:
        raise ConfigError(f"{where}.name: {e.args[0]}") from None
    weights = dict(spec.default_weights)
    for term, w in (entry.get("weights") or {}).items():
        if term not in weights:
            raise ConfigError(f"{where}.weights: unknown term {term!r} of objective {entry['name']!r}; "
                              f"terms: {', '.join(weights)}")
        if not isinstance(w, (int, float)):
            raise ConfigError(f"{where}.weights.{term}: expected a number, got {w!r}")
        weights[term] = float(w)
    rest = {k: v for k, v in entry.items() if k not in ("name", "weights")}
    return spec, from_dict(spec.config_cls, rest, where), weights


# Keys that change where or how fast a run goes, never its numbers: left out of the run id, so that
# changing them finds the existing result.
RUN_ID_IGNORED = (
    ("output_dir",), ("description",), ("data", "cache_dir"), ("data", "num_workers"), ("optim", "checkpoint_every_s"),
)


# Keys that only shape training (the sample, its seed, the schedule): a run that trains nothing does not
# depend on them, so they are left out of its run id and one result serves every tau x seed of a sweep.
SAMPLING_KEYS = (
    ("data", "shots"), ("data", "tau"), ("data", "profile"), ("data", "counts_file"), ("data", "fewshot_ids"),
    ("data", "n_views"), ("seed",), ("optim",),
)


def run_id(cfg: RunConfig, backbone_identity: str, sampling_free: bool = False) -> str:
    """Hash of the resolved config (`RUN_ID_IGNORED` left out, and `SAMPLING_KEYS` too when
    `sampling_free`) and the backbone's identity."""
    data = to_dict(cfg)
    for path in RUN_ID_IGNORED + (SAMPLING_KEYS if sampling_free else ()):
        node = data
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1], None)
    return stable_hash({"config": data, "backbone": backbone_identity}, length=12)


def trains_nothing(cfg: RunConfig, backbone: Any) -> bool:
    """True when the run takes no training step: no epochs, or a learner without trainable parameters
    (zero-shot). Its prompts then do not depend on the sample, the seed or the schedule.

    The learner is built on a one-class label space to ask it, which costs a few milliseconds.
    """
    if cfg.optim.epochs <= 0:
        return True
    from tailprompt.prompts import LEARNERS

    probe = LEARNERS.get(cfg.learner["name"]).build(learner_config(cfg), backbone, ["object"], "a photo of a {}.")
    return not any(p.requires_grad for p in probe.parameters())


def replace(cfg: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(cfg, **changes)
