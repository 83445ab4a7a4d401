"""Config resolution: dataclass defaults <- method preset <- user file <- `--set` overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from tailprompt.config import ConfigError, from_dict, load_yaml, merge, parse_override, set_path, to_dict
from tailprompt.engine.config import DataConfig, RunConfig
from tailprompt.engine.per_dataset import apply_dataset_table, leaf_paths
from tailprompt.utils import stable_hash

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


def config_source(file_or_preset: str) -> tuple[dict[str, Any], str]:
    """Plain data of a config file or preset name, and the method name it stands for.

    A user file may name a preset under `preset:`; its other keys override that preset.
    """
    path = Path(file_or_preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
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


def user_set_paths(file_or_preset: str | None) -> list[list[str]]:
    """Dotted paths the user's own config file sets (and files it names as `preset:`); none for a preset."""
    if not file_or_preset:
        return []
    path = Path(file_or_preset)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        return []
    data = load_yaml(path)
    base = data.pop("preset", None)
    return leaf_paths(data) + user_set_paths(None if base is None else str(base))


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
    dataset = (data.get("data") or {}).get("name", DataConfig.name)
    data = apply_dataset_table(data, explicit, str(dataset), DATASETS.names(), check=_checked)
    return _checked(data)


def _checked(data: dict[str, Any]) -> RunConfig:
    cfg = from_dict(RunConfig, data)
    check_protocol(cfg)
    return cfg


def check_protocol(cfg: RunConfig) -> None:
    from tailprompt.engine.protocols import PROTOCOLS

    if cfg.protocol.name not in PROTOCOLS:
        raise ConfigError(f"protocol.name: unknown protocol {cfg.protocol.name!r}; "
                          f"available: {', '.join(PROTOCOLS.names())}")


# Keys that change where or how fast a run goes, never its numbers: left out of the run id, so that
# changing them finds the existing result.
RUN_ID_IGNORED = (
    ("output_dir",), ("description",), ("data", "cache_dir"), ("data", "num_workers"), ("optim", "checkpoint_every_s"),
)


def run_id(cfg: RunConfig, backbone_identity: str) -> str:
    """Hash of the resolved config (`RUN_ID_IGNORED` left out) and the backbone's identity."""
    data = to_dict(cfg)
    for path in RUN_ID_IGNORED:
        node = data
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1], None)
    return stable_hash({"config": data, "backbone": backbone_identity}, length=12)


def replace(cfg: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(cfg, **changes)
