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
        out: dict[str, tuple[type, ...]] = {}
        for name in cls.REPORT_FIELDS:
            origin = typing.get_origin(hints[name]) or hints[name]
            out[name] = (int, float) if origin is float else (origin,)
        return out
