import re
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from tailprompt.registry import Registry
from tailprompt.schema import ConfigError, from_dict, load_yaml, parse_override, set_path, to_dict


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


@pytest.mark.parametrize("override, message", [
    ("tags.5=x", r"override tags\.5: expected an index 0\.\.1 into tags \(a list of 2\), got '5'"),
    ("tags.x=y", r"override tags\.x: expected an index 0\.\.1 into tags"),
    ("tags.-1=y", r"override tags\.-1: expected an index 0\.\.1 into tags"),
    ("empty.0=y", r"override empty\.0: empty is an empty list; set the whole list instead"),
    ("tags.0.deeper=y", r"override tags\.0\.deeper: tags\.0 is not a section"),
])
def test_list_indices_in_overrides_are_checked_naming_the_override(override, message):
    data = {"tags": ["a", "b"], "empty": []}
    path, value = parse_override(override)
    with pytest.raises(ConfigError, match=message):
        set_path(data, path, value)
    assert data == {"tags": ["a", "b"], "empty": []}


def test_a_wrong_optional_value_gets_its_types_message_not_a_union_repr():
    with pytest.raises(ConfigError, match=r"^maybe: expected an integer, got 'x'$"):
        from_dict(Outer, {"maybe": "x"})

    @dataclass
    class Choice:
        mode: typing.Literal["auto"] | bool = "auto"

    with pytest.raises(ConfigError, match=r"^mode: expected one of \['auto'\] or true/false, got 'maybe'$"):
        from_dict(Choice, {"mode": "maybe"})


@pytest.mark.parametrize("value, hint", [
    ("1e-5", "e.g. 1.0e-5"),
    ("2E+3", "e.g. 2.0e+3"),
    ("1e400", "beyond the range of a number"),
    ("0.5", "write the number without quotes"),
])
def test_numbers_that_yaml_read_as_text_say_how_to_write_them(value, hint):
    with pytest.raises(ConfigError, match=re.escape(hint)):
        from_dict(Inner, {"lr": value})
    if hint.startswith("e.g. "):  # the suggested spelling is one YAML reads as a number
        assert isinstance(yaml.safe_load(hint.removeprefix("e.g. ")), float)


def test_integers_written_in_exponent_notation_are_named():
    with pytest.raises(ConfigError, match=r"seed: expected an integer, got '1e5' .*e\.g\. 100000"):
        from_dict(Outer, {"seed": "1e5"})


@pytest.mark.parametrize("text, message", [
    ("a: &x [1, *x]\n", "refers to a value that contains it"),
    ("a: &x {b: *x}\n", "refers to a value that contains it"),
    ("".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8)).replace("*l0", "1"),
     "expands to more than"),
])
def test_yaml_aliases_that_loop_or_explode_are_one_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_yaml(path)
    assert str(info.value).startswith(str(path))


def test_shared_yaml_anchors_without_a_cycle_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 0.1}\nother: *b\n")
    assert load_yaml(path) == {"base": {"lr": 0.1}, "other": {"lr": 0.1}}
