"""Typed configs: dataclasses in, YAML in and out, strict keys, `a.b=c` overrides.

Every config in tailprompt is a dataclass. `from_dict` builds one from plain data and rejects unknown
keys with an error naming the dotted field; `to_dict` gives plain data back (for YAML and hashing).
A dataclass whose schema depends on one of its values (a learner section: its keys depend on the learner's
name) defines `from_data(data, where)` and `to_data()`; both functions defer to them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tailprompt.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override does not fit the schema; the message names the field (a `UserError`: one line
    from the CLI)."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # an optional value: the one type's own message (it may name a nested key)
            raise errors[0]
        raise ConfigError(f"{where}: expected {_alternatives(errors, where, type(None) in args)}, got {value!r}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if hasattr(tp, "from_data"):  # a section whose schema depends on a value in it (a registry name)
            return tp.from_data(value, where)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}{_number_hint(value, int)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}{_number_hint(value, float)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _alternatives(errors: list[ConfigError], where: str, optional: bool) -> str:
    """"an integer or null" from the members' messages (`<where>: expected X, got ...`)."""
    wanted = []
    for e in errors:
        text = str(e)
        head = f"{where}: expected "
        wanted.append(text[len(head):].rsplit(", got ", 1)[0] if text.startswith(head) else text)
    return " or ".join(wanted + (["null"] if optional else []))


def _number_hint(value: Any, tp: type) -> str:
    """Why a number written as text did not parse (YAML 1.1 reads `1e-5`, without a dot, as a string)."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return " (text, and beyond the range of a number)" if text.lower().lstrip("+-") not in ("inf", "nan") else \
            " (text; write .inf or .nan for YAML's infinity and not-a-number)"
    mantissa, e, exponent = text.lower().partition("e")
    if tp is int:
        if not e:
            return " (text: write the number without quotes)" if number.is_integer() else ""
        return f" (text; write the integer in digits, e.g. {int(number)})" if number.is_integer() else ""
    if e:
        sign = "" if exponent[:1] in ("+", "-") else "+"
        fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{sign}{exponent}"
        return f" (text: YAML reads exponent notation as a number only with a dot and a signed exponent, " \
               f"e.g. {fixed})"
    return " (text: write the number without quotes)"


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise `ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!r}; valid keys here: {', '.join(sorted(types_))}"
        )
    kwargs = {k: _coerce(types_[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a dataclass tree."""
    if hasattr(obj, "to_data") and not isinstance(obj, type):
        return to_dict(obj.to_data())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice (it would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """`yaml.safe_load` that refuses duplicate keys (`yaml.YAMLError` with the line)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    from tailprompt.files import FileReadError, read_text

    path = Path(path)
    try:
        text = read_text(path, "config file")
    except FileReadError as e:
        raise ConfigError(str(e)) from None
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    check_tree(data, str(path))
    return data


MAX_CONFIG_VALUES = 1_000_000  # a config expands to far fewer values; YAML aliases can expand exponentially


def check_tree(data: Any, where: str) -> None:
    """Reject a YAML tree that refers to itself (`a: &x [*x]`) or whose aliases expand beyond
    `MAX_CONFIG_VALUES` values (a "billion laughs" file): both would exhaust memory or the stack later."""
    seen = 0
    stack: list[tuple[Any, tuple[int, ...]]] = [(data, ())]
    while stack:
        node, ancestors = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where}: expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases?)")
        if isinstance(node, (dict, list)):
            if id(node) in ancestors:
                raise ConfigError(f"{where}: a YAML alias refers to a value that contains it (a cycle)")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, (*ancestors, id(node))) for child in children)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(to_dict(data), sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], value); the value is parsed as YAML (so 0.5, true, [1, 2] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. data.tau=0.06")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = safe_load_unique(raw) if raw.strip() else ""
    except yaml.constructor.ConstructorError as e:  # valid YAML that names a key twice
        raise ConfigError(f"override {text!r}: {e.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `data[p0][p1]... = value`, creating intermediate mappings; list items by integer index."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, path, i)]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        if not isinstance(node[part], (dict, list)):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = node[part]
    if isinstance(node, list):
        node[_list_index(node, path, len(path) - 1)] = value
    else:
        node[path[-1]] = value


def _list_index(items: list[Any], path: list[str], i: int) -> int:
    """`path[i]` as an index into `items` (the list at `path[:i]`), or a `ConfigError` naming the override."""
    part = path[i]
    if not part.isdigit() or int(part) >= len(items):
        where = ".".join(path[:i])
        raise ConfigError(f"override {'.'.join(path)}: expected an index 0..{len(items) - 1} into {where} "
                          f"(a list of {len(items)}), got {part!r}" if items else
                          f"override {'.'.join(path)}: {where} is an empty list; set the whole list instead, "
                          f"e.g. {where}=[...]")
    return int(part)


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge, everything else (lists included) is replaced."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
