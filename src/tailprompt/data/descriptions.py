"""Per-class description sentences (CoPrompt's `gpt_file` format: `{classname: [sentence, ...]}`)."""

from __future__ import annotations

import json
from pathlib import Path

from tailprompt.config import ConfigError


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """The descriptions in `path`; errors name the file and the entry that does not fit the format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: descriptions file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object {{classname: [sentence, ...]}}, got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for name, sentences in data.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise ConfigError(f"{path}: class {name!r}: expected a list of non-empty sentences")
        out[str(name)] = list(sentences)
    return out
