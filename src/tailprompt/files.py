"""The one place where reading a user's file fails: every error names the file and what was expected.

Commands read JSON, YAML text and safetensors through these functions, so a truncated, undecodable or
missing file becomes one line (`FileReadError`, a `UserError`) instead of a library's traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailprompt.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor


class FileReadError(UserError, ValueError):
    """A file the user named cannot be read as what it should be; the message starts with its path.

    Also a `ValueError`, so library callers that treat bad input as `ValueError` keep working.
    """


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


@contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Turn the errors of reading `path` (a `what`, e.g. "result file") into a `FileReadError`."""
    try:
        yield
    except FileReadError:
        raise
    except FileNotFoundError:
        raise FileReadError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise FileReadError(f"{path}: is a folder, expected a {what}") from None
    except PermissionError:
        raise FileReadError(f"{path}: {what} is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise FileReadError(f"{path}: {what} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise FileReadError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                            f"truncated?") from None
    except OSError as e:
        raise FileReadError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except Exception as e:  # safetensors' SafetensorError has no stable import path across versions
        if type(e).__name__ == "SafetensorError":
            raise FileReadError(f"{path}: {what} is truncated or not a safetensors file ({_first_line(e)})") from None
        raise


def read_text(path: str | Path, what: str = "file") -> str:
    with reading(path, what):
        return Path(path).read_text(encoding="utf-8")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    with reading(path, what):
        return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """A JSON file whose top level must be an object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise FileReadError(f"{path}: {what} should hold a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: str | Path, what: str = "safetensors file") -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, on the CPU."""
    from safetensors import safe_open

    with reading(path, what):
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Create `folder` if needed and prove a file can be written in it, before any work is spent.

    Raises a `UserError` naming the folder.
    """
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{folder}: {what} is not writable ({e.strerror or e}); set output_dir to a folder "
                        f"you can write") from None
