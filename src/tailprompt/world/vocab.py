"""Label vocabularies: downstream class lists over attribute combinations, and the held-out pairs.

Label order puts a checkerboard half of each vocabulary's attribute grid first, so the base half
(first ceil(K/2) labels) and the new half both cover every attribute value: "new" classes are new
*combinations*. The new halves of `colour_shape` (and hence of `size_colour_shape`) are
`held_out_pairs()`: those colour+shape pairs never occur in pretraining.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from tailprompt.world.render import ATTRIBUTES, COLOURS, SHAPES

TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class LabelVocab:
    """A label space over attribute combinations.

    `values[attr]` are the attribute indices used; classes are the product in `phrase` order
    ("size colour shape" -> "large red circle"). `split` decides base and new: "checkerboard" makes a class
    base when the sum of its positions along `split_attrs` is even (new classes are new *combinations* of
    words the prompts were trained on); "values" makes it base when its value of `split_attrs[0]` is in the
    first half of that attribute's values (new classes carry words, e.g. shapes, that no training label
    has, as real base-to-new splits do: the prompts never see the new class names' key words).
    """

    name: str
    phrase: tuple[str, ...]
    values: Mapping[str, tuple[int, ...]]
    split_attrs: tuple[str, ...]
    template: str = TEMPLATE
    split: Literal["checkerboard", "values"] = "checkerboard"

    def classes(self) -> list[dict[str, int]]:
        """Attribute dicts in label order: the base half first, then the new half (product order within)."""
        combos: list[dict[str, int]] = [{}]
        for attr in self.phrase:
            combos = [{**c, attr: v} for c in combos for v in self.values[attr]]
        return [c for c in combos if not self._is_new(c)] + [c for c in combos if self._is_new(c)]

    def _is_new(self, c: Mapping[str, int]) -> bool:
        if self.split == "values":
            values = self.values[self.split_attrs[0]]
            return values.index(c[self.split_attrs[0]]) >= math.ceil(len(values) / 2)
        return sum(self.values[a].index(c[a]) for a in self.split_attrs) % 2 == 1

    def classname(self, attrs: Mapping[str, int]) -> str:
        return " ".join(ATTRIBUTES[a][attrs[a]] for a in self.phrase)

    def classnames(self) -> list[str]:
        return [self.classname(c) for c in self.classes()]

    def num_base(self) -> int:
        return math.ceil(len(self.classes()) / 2)


VOCABULARIES: dict[str, LabelVocab] = {
    v.name: v
    for v in (
        LabelVocab(
            "colour_shape", ("colour", "shape"),
            {"colour": tuple(range(6)), "shape": tuple(range(6))}, ("colour", "shape"),
        ),
        LabelVocab(
            "texture_shape", ("texture", "shape"),
            {"texture": tuple(range(4)), "shape": tuple(range(8))}, ("texture", "shape"),
        ),
        LabelVocab(
            "size_colour_shape", ("size", "colour", "shape"),
            {"size": (0, 1), "colour": tuple(range(6)), "shape": tuple(range(6))}, ("colour", "shape"),
        ),
        # The demo's benchmark: base classes use circle, square, triangle; new classes star, heart, cross.
        LabelVocab(
            "size_colour_shape_by_shape", ("size", "colour", "shape"),
            {"size": (0, 1), "colour": tuple(range(6)), "shape": tuple(range(6))}, ("shape",), split="values",
        ),
    )
}
# All 80 colour+shape pairs: only for the pretraining report (not a registered dataset).
FULL_COLOUR_SHAPE = LabelVocab(
    "colour_shape_all", ("colour", "shape"),
    {"colour": tuple(range(len(COLOURS))), "shape": tuple(range(len(SHAPES)))}, ("colour", "shape"),
)


def held_out_pairs() -> frozenset[tuple[int, int]]:
    """(colour, shape) index pairs never rendered in pretraining: the new half of `colour_shape`.

    The new half of `size_colour_shape` (both sizes of the same colour+shape grid) is exactly this set too.
    """
    vocab = VOCABULARIES["colour_shape"]
    return frozenset((c["colour"], c["shape"]) for c in vocab.classes()[vocab.num_base():])


def pretraining_pairs() -> torch.Tensor:
    """[P, 2] (colour, shape) pairs pretraining may render: all pairs minus `held_out_pairs()`."""
    held = held_out_pairs()
    keep = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if (c, s) not in held]
    return torch.tensor(keep, dtype=torch.long)

