"""The result record of one run: what `result.json` holds (schema and meaning: docs/results.md).

The engine builds a `RunRecord` and writes `to_json()`; the report reads the JSON back and checks the
fields it tables against the same class (`REPORT_FIELDS`), so writer and reader share one definition.
Blocks whose inner layout is documented in docs/results.md stay plain JSON data.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class RunRecord:
    run_id: str
    method: str  # preset name (tables group rows by it)
    seed: int
    dataset: str
    protocol: str
    tau: float
    shots: int
    learner: str
    splits: dict[str, dict[str, Any]]  # split name -> accuracy, ece, ... (per split)
    protocol_label: str = ""
    split_roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> label, training, harmonic_mean
    sampling_independent: bool = False  # trains nothing: one result serves every tau x seed
    template: str = ""
    backbone: dict[str, Any] = field(default_factory=dict)  # name, identity, precision
    config: dict[str, Any] = field(default_factory=dict)  # the resolved run config
    versions: dict[str, str] = field(default_factory=dict)
    device: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)  # counts and ids per class
    augment: dict[str, Any] = field(default_factory=dict)
    hm: float | None = None
    groups: dict[str, Any] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)
    clusters: dict[str, Any] = field(default_factory=dict)
    loss_curve: dict[str, list[float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # The fields every table reads; older records must have these (with these types) to be reported.
    REPORT_FIELDS: ClassVar[tuple[str, ...]] = ("method", "seed", "dataset", "protocol", "tau", "splits")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def report_field_types(cls) -> dict[str, tuple[type, ...]]:
        """`REPORT_FIELDS` -> the JSON types that fit them (an int fits a float field)."""
        hints = typing.get_type_hints(cls)
        return {name: _json_types(hints[name]) for name in cls.REPORT_FIELDS}

    @classmethod
    def optional_field_types(cls) -> dict[str, tuple[type, ...]]:
        """Every other field -> the JSON types that fit it when a record has it (`None` where it is optional)."""
        hints = typing.get_type_hints(cls)
        return {f.name: _json_types(hints[f.name]) for f in dataclasses.fields(cls) if f.name not in cls.REPORT_FIELDS}


def _json_types(tp: Any) -> tuple[type, ...]:
    """The JSON value types of a field annotation: `float` -> int or float, `X | None` -> X's or None."""
    args = typing.get_args(tp)
    if type(None) in args:
        return tuple(t for a in args if a is not type(None) for t in _json_types(a)) + (type(None),)
    origin = typing.get_origin(tp) or tp
    return (int, float) if origin is float else (origin,)
