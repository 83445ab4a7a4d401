from dataclasses import dataclass, field

import pytest

from tailprompt.registry import Registry
from tailprompt.schema import ConfigError, from_dict, parse_override, set_path, to_dict


@dataclass
class Inner:
    lr: float = 0.1
    name: str = "sgd"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    seed: int = 1
    tags: list[str] = field(default_factory=list)
    maybe: int | None = None


def test_from_dict_roundtrip_and_int_to_float():
    cfg = from_dict(Outer, {"inner": {"lr": 1}, "seed": 3, "tags": ["a"]})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert to_dict(cfg) == {"inner": {"lr": 1.0, "name": "sgd"}, "seed": 3, "tags": ["a"], "maybe": None}


def test_unknown_key_names_the_dotted_field():
    with pytest.raises(ConfigError, match=r"inner\.'lrr'|inner.*lrr"):
        from_dict(Outer, {"inner": {"lrr": 1}})


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match="seed"):
        from_dict(Outer, {"seed": "x"})


def test_override_parsing():
    d: dict = {}
    path, value = parse_override("inner.lr=0.5")
    set_path(d, path, value)
    assert d == {"inner": {"lr": 0.5}}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_registry_errors_list_names():
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError):
        reg.register("a", 2)
    with pytest.raises(KeyError, match="valid names: a"):
        reg.get("b")
