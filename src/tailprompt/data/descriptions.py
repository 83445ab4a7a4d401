"""Per-class description sentences (`data.descriptions`): CoPrompt's `gpt_file` JSON, read and checked.

The file maps a class name to a list of sentences, `{"Annual Crop Land": ["...", "..."], ...}`, the
format of ShuvenduRoy/CoPrompt `gpt_file/<dataset>_prompt.json`. The reference looks each class up
under its name with `_` replaced by a space (`trainers/coprompt.py:gpt_clip_classifier`); the raw name
is accepted too. A single string counts as a one-sentence list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tailprompt.config import ConfigError

# Classes listed in an error message before "... and N more".
_SHOWN = 10


def description_key(classname: str) -> str:
    """The key the reference looks a class up under (`_` -> space)."""
    return classname.replace("_", " ")


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """The `{classname: [sentence, ...]}` mapping of a descriptions JSON file, with its shape checked.

    Raises:
        ConfigError: missing or unreadable file, invalid JSON (with line and column), or not a mapping of
            names to non-empty lists of non-empty strings; the message names the file (and the class).
    """
    path = Path(path)
    where = f"data.descriptions: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: descriptions file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read the file ({e})") from None
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
            f"{where}: no descriptions for {len(missing)} of {len(classnames)} classes: {_listed(missing)} "
            "(keys are class names with '_' as spaces)"
        )
    return [list(row) for row in rows if row]


__all__ = ["class_descriptions", "description_key", "read_descriptions"]
