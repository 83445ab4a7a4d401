"""Per-class text descriptions (`data.descriptions`): CoPrompt's `gpt_file` JSON, read and checked.

The file maps a class name to a list of sentences, `{"Annual Crop Land": ["...", "..."], ...}`, the
format of ShuvenduRoy/CoPrompt `gpt_file/<dataset>_prompt.json`. The reference looks each class up
under its name with `_` replaced by a space (`trainers/coprompt.py:gpt_clip_classifier`); the raw name
is accepted too. It stacks the sentences into `[n_desc, K, D]` features and each training step uses
one description index for all classes, so every class must have the same number of sentences.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tailprompt.data.files import DatasetError

# Classes listed in an error message before "... and N more".
_SHOWN = 8


class DescriptionError(DatasetError):
    """A descriptions file is missing, malformed or does not cover the class list; the message names it."""


def description_key(classname: str) -> str:
    """The key the reference looks a class up under (`_` -> space)."""
    return classname.replace("_", " ")


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def load_descriptions_file(path: str | Path) -> dict[str, list[str]]:
    """The `{classname: [sentence, ...]}` mapping of a descriptions JSON file, with its shape checked.

    Raises:
        DescriptionError: missing file, invalid JSON, or not a mapping of names to non-empty lists
            of non-empty strings; the message names the file (and the class).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DescriptionError(f"data.descriptions: {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DescriptionError(f"data.descriptions: {path}: cannot read ({e})") from None
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise DescriptionError(
            f"data.descriptions: {path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            'expected {"class name": ["sentence", ...], ...}'
        ) from None
    if not isinstance(data, dict):
        raise DescriptionError(
            f"data.descriptions: {path}: expected a JSON object mapping class names to lists of sentences, "
            f"got a JSON {type(data).__name__}"
        )
    for name, sentences in data.items():
        if (
            not isinstance(sentences, list)
            or not sentences
            or not all(isinstance(s, str) and s.strip() for s in sentences)
        ):
            raise DescriptionError(
                f"data.descriptions: {path}: class {name!r} must map to a non-empty list of non-empty "
                f"sentences, got {sentences!r:.80}"
            )
    return data


def class_descriptions(
    descriptions: dict[str, list[str]], classnames: Sequence[str], source: str | Path
) -> list[list[str]]:
    """The sentences of each class in `classnames` order -> `[K][n_desc]`.

    Raises:
        DescriptionError: classes the file does not describe (all of them named, up to a few), or
            classes with different numbers of sentences (one index is drawn for all classes per step).
    """
    rows: list[list[str]] = []
    missing: list[str] = []
    for name in classnames:
        key = description_key(name)
        found = descriptions.get(key, descriptions.get(name))
        if found is None:
            missing.append(key)
        else:
            rows.append(list(found))
    if missing:
        raise DescriptionError(
            f"data.descriptions: {source}: no descriptions for {len(missing)} of {len(classnames)} classes: "
            f"{_listed(missing)} (keys are class names with '_' as spaces)"
        )
    counts = {len(r) for r in rows}
    if len(counts) > 1:
        by_count: dict[int, list[str]] = {}
        for name, row in zip(classnames, rows):
            by_count.setdefault(len(row), []).append(description_key(name))
        detail = "; ".join(f"{n}: {_listed(names)}" for n, names in sorted(by_count.items()))
        raise DescriptionError(
            f"data.descriptions: {source}: every class needs the same number of sentences (one description "
            f"index is drawn for all classes per step, as in CoPrompt); sentences per class: {detail}"
        )
    return rows


def read_class_descriptions(path: str | Path, classnames: Sequence[str]) -> list[list[str]]:
    """`class_descriptions(load_descriptions_file(path), classnames, path)`."""
    return class_descriptions(load_descriptions_file(path), classnames, path)


def description_features(backbone: Any, rows: Sequence[Sequence[str]], source: str | Path = "") -> Tensor:
    """Frozen text features of every description, normalised per sentence -> `[n_desc, K, D]` (fp32).

    As the reference's `gpt_clip_classifier`: each sentence is encoded by the plain text tower (no
    template, no prompt) and divided by its norm; the per-index matrices are stacked, not averaged.

    Raises:
        DescriptionError: a sentence does not fit the text tower's context (the reference fails there
            too); the message names the class and the file.
    """
    per_class = []
    with torch.no_grad():
        for sentences in rows:
            try:
                tokens = backbone.tokenize(list(sentences))
            except ValueError as e:
                raise DescriptionError(f"data.descriptions: {source}: {e}") from None
            feats = backbone.encode_text(tokens).float()
            per_class.append(feats / feats.norm(dim=-1, keepdim=True))
    return torch.stack(per_class, dim=1)


__all__ = [
    "DescriptionError",
    "class_descriptions",
    "description_features",
    "description_key",
    "load_descriptions_file",
    "read_class_descriptions",
]
