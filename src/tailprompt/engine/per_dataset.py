"""Per-dataset settings of a preset: a table applied by the name of the run's dataset.

Some reference implementations tune a few settings per dataset outside their yaml (CoPrompt's
`trainers/constants.py:get_dataset_specified_config`: EuroSAT trains with prompt depth 12, 2 tokens and
weight 0.1). A preset carries such a table as data:

    per_dataset:                       # dataset name -> {dotted key: value}
      eurosat: {learner: {prompt_depth: 12, n_ctx: 2}, objectives.coprompt.weights: {text: 0.1, image: 0.1}}
      food101: {optim.epochs: 5}

Order of precedence: dataclass defaults <- preset <- the entry of `data.name` <- the user's file <- `--set`.
A key the user sets (or any key above or below it: `learner` covers `learner.n_ctx`) keeps the user's
value. Mapping values merge key by key (`learner: {n_ctx: 2}` sets `learner.n_ctx` only). A list item is
addressed by index or, for `objectives`, by the objective's name. The table leaves
the resolved config (which records the values used); `per_dataset: null` turns it off.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tailprompt.schema import ConfigError, set_path

TABLE_KEY = "per_dataset"
Path = list[str]


def leaf_paths(data: Mapping[str, Any], prefix: Sequence[str] = ()) -> list[Path]:
    """Dotted paths a config mapping sets; lists and scalars are leaves (a list replaces wholesale)."""
    out: list[Path] = []
    for key, value in data.items():
        path = [*prefix, str(key)]
        if isinstance(value, Mapping) and value:
            out.extend(leaf_paths(value, path))
        else:
            out.append(path)
    return out


def _overlaps(a: Sequence[str], b: Sequence[str]) -> bool:
    """One path is a prefix of the other (setting either touches the other)."""
    n = min(len(a), len(b))
    return list(a[:n]) == list(b[:n])


def indexed_path(data: Mapping[str, Any], dotted: str, where: str) -> Path:
    """`objectives.coprompt.weights` -> `["objectives", "1", "weights"]`: list items named by `name`."""
    parts = dotted.split(".")
    node: Any = data
    out: Path = []
    for part in parts:
        if isinstance(node, list):
            if part.isdigit():
                index = int(part)
            else:
                names = [item.get("name") if isinstance(item, Mapping) else None for item in node]
                if names.count(part) != 1:
                    found = ", ".join(str(n) for n in names if n is not None) or "none"
                    raise ConfigError(
                        f"{where}: {'.'.join(out) or dotted} has {'no' if part not in names else 'several'} "
                        f"entries named {part!r} (names: {found})"
                    )
                index = names.index(part)
            if index >= len(node):
                raise ConfigError(f"{where}: {'.'.join(out)} has no item {index}")
            out.append(str(index))
            node = node[index]
        else:
            out.append(part)
            node = node.get(part) if isinstance(node, Mapping) else None
    return out


def dataset_table(data: Mapping[str, Any], known_datasets: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The checked `per_dataset` table of a resolved mapping ({} when absent or null)."""
    table = data.get(TABLE_KEY)
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{TABLE_KEY}: expected a mapping of dataset names to {{dotted.key: value}}, got {table!r}")
    known = set(known_datasets)
    for dataset, entry in table.items():
        if dataset not in known:
            raise ConfigError(f"{TABLE_KEY}: unknown dataset {dataset!r}; datasets: {', '.join(sorted(known))}")
        if entry is not None and not isinstance(entry, Mapping):
            raise ConfigError(f"{TABLE_KEY}.{dataset}: expected a mapping of dotted keys to values, got {entry!r}")
    return {str(k): dict(v or {}) for k, v in table.items()}


def flat_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """`{learner: {n_ctx: 2}}` -> `{"learner.n_ctx": 2}`: a mapping value merges key by key, as layers do."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if isinstance(value, Mapping) and value:
            out.update({f"{key}.{k}": v for k, v in flat_entry(value).items()})
        else:
            out[str(key)] = value
    return out


def apply_entry(data: dict[str, Any], entry: Mapping[str, Any], explicit: Sequence[Path], where: str) -> list[str]:
    """Set the entry's keys in `data` (in place) unless the user set them; returns the keys applied."""
    applied = []
    for dotted, value in flat_entry(entry).items():
        if any(_overlaps(dotted.split("."), e) for e in explicit):
            continue  # checked by name first: the user may have replaced the list the key points into
        path = indexed_path(data, str(dotted), f"{where}.{dotted}")
        if any(_overlaps(path, e) for e in explicit):
            continue
        set_path(data, path, copy.deepcopy(value))
        applied.append(str(dotted))
    return applied


def apply_dataset_table(
    data: dict[str, Any],
    explicit: Sequence[Path],
    dataset: str,
    known_datasets: Iterable[str],
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """`data` without its `per_dataset` table, with the entry of `dataset` applied under the user's keys.

    Args:
        data: the merged plain config (preset <- user file <- overrides).
        explicit: paths the user set (their file, `--set`); those keys keep the user's value.
        dataset: the run's `data.name`.
        known_datasets: registered dataset names (table keys are checked against them).
        check: validates a candidate config (raises `ConfigError`); every entry of the table is tried,
            so a typo in another dataset's row fails now rather than on the run that reaches it.
    """
    table = dataset_table(data, known_datasets)
    base = {k: v for k, v in data.items() if k != TABLE_KEY}
    explicit = [*explicit, [TABLE_KEY]]
    result = base
    if check is not None and table:
        check(base)  # a fault of the preset itself is reported without a table prefix
    for name, entry in table.items():
        candidate = copy.deepcopy(base)
        where = f"{TABLE_KEY}.{name}"
        apply_entry(candidate, entry, explicit, where)
        if check is not None:
            try:
                check(candidate)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        if name == dataset:
            result = candidate
    return result


__all__ = [
    "TABLE_KEY", "apply_dataset_table", "apply_entry", "dataset_table", "flat_entry", "indexed_path", "leaf_paths",
]
