"""Per-class description sentences (`data.descriptions`): CoPrompt's `gpt_file` JSON, read and checked.

The file maps a class name to a list of sentences, `{"Annual Crop Land": ["...", "..."], ...}`, the
format of ShuvenduRoy/CoPrompt `gpt_file/<dataset>_prompt.json`. The reference looks each class up
under its name with `_` replaced by a space (`trainers/coprompt.py:gpt_clip_classifier`); the raw name
is accepted too. A single string counts as a one-sentence list. `data.descriptions` may also name a
folder laid out as CoPrompt's `gpt_file/` (`eurosat_prompt.json`, `fgvc_prompt.json`, ...): the run's
dataset picks its file, so one setting serves a sweep over datasets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tailprompt.files import FileReadError, read_text
from tailprompt.schema import ConfigError

# Classes listed in an error message before "... and N more".
_SHOWN = 10

# File stems of CoPrompt's `gpt_file/<stem>_prompt.json` per dataset (its `dataset_name_mapping`), so that
# `data.descriptions` may name the whole folder and one sweep covers every dataset.
GPT_FILE_STEMS = {
    "caltech101": "caltech",
    "dtd": "dtd",
    "eurosat": "eurosat",
    "fgvc_aircraft": "fgvc",
    "food101": "food101",
    "imagenet": "imagenet",
    "imagenet_a": "imagenet_a",
    "imagenet_r": "imagenet_r",
    "imagenet_sketch": "imagenet_sketch",
    "imagenetv2": "imagenetv2",
    "oxford_flowers": "oxford_flowers",
    "oxford_pets": "oxford_pets",
    "stanford_cars": "stanford_cars",
    "sun397": "sun397",
    "ucf101": "ucf101",
}


def description_key(classname: str) -> str:
    """The key the reference looks a class up under (`_` -> space)."""
    return classname.replace("_", " ")


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def descriptions_file(path: str | Path, dataset: str) -> Path:
    """`path` itself, or for a folder (CoPrompt's `gpt_file/`) the dataset's `<stem>_prompt.json` in it.

    Raises:
        ConfigError: the folder has no file for `dataset` (the message names the file it looked for).
    """
    path = Path(path)
    if not path.is_dir():
        return path
    found = path / f"{GPT_FILE_STEMS.get(dataset, dataset)}_prompt.json"
    if found.exists() and not found.is_file():  # a folder or pipe of that name: said as such by the reader
        return found
    if not found.is_file():
        raise ConfigError(
            f"data.descriptions: {path} is a folder without {found.name} for dataset {dataset!r}; "
            "name the file itself or add it (CoPrompt's gpt_file/<dataset>_prompt.json naming)"
        )
    return found


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """The `{classname: [sentence, ...]}` mapping of a descriptions JSON file, with its shape checked.

    Raises:
        ConfigError: missing or unreadable file, invalid JSON (with line and column), or not a mapping of
            names to non-empty lists of non-empty strings; the message names the file (and the class).
    """
    path = Path(path)
    where = f"data.descriptions: {path}"
    try:
        text = read_text(path, "descriptions file")
    except FileReadError as e:
        raise ConfigError(f"data.descriptions: {e}") from None
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            'expected {"class name": ["sentence", ...], ...}'
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a JSON object {{classname: [sentence, ...]}}, got a JSON {type(data).__name__}"
        )
    out: dict[str, list[str]] = {}
    for name, sentences in data.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if (
            not isinstance(sentences, list)
            or not sentences
            or not all(isinstance(s, str) and s.strip() for s in sentences)
        ):
            raise ConfigError(f"{where}: class {name!r}: expected a non-empty list of non-empty sentences")
        out[str(name)] = list(sentences)
    return out


def class_descriptions(by_class: Mapping[str, list[str]], classnames: Sequence[str], where: str) -> list[list[str]]:
    """The sentences of each class in `classnames` order -> `[K][n_k]`.

    Raises:
        ConfigError: naming how many and which classes have no entry (looked up as the reference does).
    """
    rows = [by_class.get(description_key(c)) or by_class.get(c) for c in classnames]
    missing = [description_key(c) for c, row in zip(classnames, rows) if not row]
    if missing:
        raise ConfigError(
            f"{where}: no descriptions for classes {_listed(missing)} ({len(missing)} of {len(classnames)}; "
            "keys are class names with '_' as spaces)"
        )
    return [list(row) for row in rows if row]


__all__ = ["GPT_FILE_STEMS", "class_descriptions", "description_key", "descriptions_file", "read_descriptions"]
