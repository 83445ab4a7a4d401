"""Config resolution: dataclass defaults <- method preset <- user file <- `--set` overrides."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from tailprompt.engine.per_dataset import apply_dataset_table, leaf_paths
from tailprompt.engine.run_config import DataConfig, RunConfig, validate_ranges
from tailprompt.schema import ConfigError, from_dict, load_yaml, merge, parse_override, set_path, to_dict
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


def config_source(file_or_preset: str, _chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """Plain data of a config file or preset name, and the method name it stands for.

    A user file may name a preset (or another config file) under `preset:`; its other keys override that
    preset. A chain of files that comes back to one of its files is a `ConfigError` naming the chain.
    """
    path = Path(file_or_preset)
    if names_a_file(file_or_preset):
        data = load_yaml(path)
        if not data:  # an empty or truncated file would silently train the defaults
            raise ConfigError(f"{path}: empty config file; expected settings, e.g. `preset: coop` and the keys "
                              f"to change (or leave out --config to train the defaults)")
        base_name = _preset_key(data, path)
        if base_name is not None:
            chain = (*_chain, _identity(path))
            if names_a_file(base_name) and _identity(Path(base_name)) in chain:
                raise ConfigError(f"{path}: preset: {base_name!r} leads back to a config file already read "
                                  f"({' -> '.join(chain)}); a config file cannot be its own preset")
            base, method = config_source(base_name, chain)
            data = merge(base, data)
            data.setdefault("method", method)
        return data, str(data.get("method") or path.stem)
    data = load_yaml(preset_path(file_or_preset))
    data.setdefault("method", file_or_preset)
    return data, file_or_preset


def _preset_key(data: dict[str, Any], path: Path) -> str | None:
    """The `preset:` a config file names (popped from `data`): a preset name or another config file."""
    base = data.pop("preset", None)
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise ConfigError(f"{path}: preset: expected a preset name or a config file path, got {base!r}")
    return base


def _identity(path: Path) -> str:
    return os.path.realpath(path)  # unlike Path.resolve(), does not raise on a symlink loop


def user_set_paths(file_or_preset: str | None) -> list[list[str]]:
    """Dotted paths the user's own config file sets (and files it names as `preset:`); none for a preset."""
    if not file_or_preset:
        return []
    if not names_a_file(file_or_preset):
        return []
    data = load_yaml(Path(file_or_preset))
    base = _preset_key(data, Path(file_or_preset))
    return leaf_paths(data) + user_set_paths(base)


def resolve_config(file_or_preset: str | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Resolve a run config; unknown keys anywhere are a `ConfigError` naming the key.

    The learner, objective and hook sections are typed against their registered config dataclasses here,
    once, so every later reader gets `cfg.learner.options` etc. instead of a dict. A preset's `per_dataset`
    table (engine/per_dataset.py) is applied for the run's `data.name` under the keys the user set in their
    file or with `--set`.
    """
    import tailprompt.data  # noqa: F401  (registers the dataset names the table is checked against)
    from tailprompt.data.registry import DATASETS

    data: dict[str, Any] = {}
    if file_or_preset:
        data, _ = config_source(file_or_preset)
    data = to_dict(data)
    explicit = user_set_paths(file_or_preset)
    for text in overrides:
        path, value = parse_override(text)
        set_path(data, path, value)
        explicit.append(path)
    adopt_sampling_of_reused_ids(data)
    dataset = (data.get("data") or {}).get("name", DataConfig.name)
    data = apply_dataset_table(data, explicit, str(dataset), DATASETS.names(), check=_checked)
    return _checked(data)


def _checked(data: dict[str, Any]) -> RunConfig:
    cfg = from_dict(RunConfig, data)
    check_protocol(cfg)
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


def check_protocol(cfg: RunConfig) -> None:
    from tailprompt.protocols import PROTOCOLS

    if cfg.protocol.name not in PROTOCOLS:
        raise ConfigError(f"protocol.name: unknown protocol {cfg.protocol.name!r}; "
                          f"available: {', '.join(PROTOCOLS.names())}")


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
    from tailprompt.prompts import build_learner

    probe = build_learner(cfg.learner.name, cfg.learner.options, backbone, ["object"], "a photo of a {}.")
    return not any(p.requires_grad for p in probe.parameters())


def replace(cfg: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(cfg, **changes)


def check_first_stage(second: RunConfig, first: RunConfig, where: str) -> None:
    """A run that starts from another method's run (DPC's second stage) needs a run of the learner it builds
    on: a `ConfigError` naming `where` (the setting that chose `first`) before anything trains."""
    from tailprompt.prompts import LEARNERS

    wanted = LEARNERS.get(second.learner.name).first_stage_learner(second.learner.options)
    if first.learner.name != wanted:
        raise ConfigError(f"{where}: {first.method or first.learner.name!r} trains learner {first.learner.name!r}, "
                          f"but this run starts from a {wanted!r} run")
