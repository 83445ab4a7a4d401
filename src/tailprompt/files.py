"""The one place where reading a user's file fails: every error names the file and what was expected.

Commands read JSON, YAML text and safetensors through these functions, so a truncated, undecodable or
missing file becomes one line (`FileReadError`, a `UserError`) instead of a library's traceback. Output paths
are checked up front (`check_writable`, `check_output_file`) and written through `utils.atomic_path`, whose
failures are a `FileWriteError` naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailprompt.errors import FileWriteError, UserError

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


def short_repr(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for a message that quotes a bad value from a user's file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_file(path: Path) -> None:
    """Raise what `reading` turns into "not found" / "is a folder" unless `path` is a file."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    if path.exists() and not path.is_file():  # a pipe, socket or device: its size and bytes are not a file's
        raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device)", str(path))
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "not found", str(path))


def read_text(path: str | Path, what: str = "file") -> str:
    with reading(path, what):
        require_file(Path(path))  # a FIFO would block the read forever
        return Path(path).read_text(encoding="utf-8")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    with reading(path, what):  # for the JSON errors; read_text names the file's own
        return json.loads(read_text(path, what))


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
        require_file(Path(path))
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


def write_failure(path: str | Path, error: OSError) -> str:
    """Why writing under `path` failed, in words: a file standing where a folder is needed is named."""
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        for parent in Path(path).parents:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a folder"
    return error.strerror or " ".join(str(error).split()) or type(error).__name__


def check_writable(folder: str | Path, what: str = "output folder", setting: str = "output_dir",
                   hint: str | None = None) -> None:
    """Create `folder` if needed and prove a file can be written in it, before any work is spent.

    Raises a `FileWriteError` (a `UserError`) naming the folder and `setting`, the option that chose it
    (`hint` replaces the advice to set it).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        why = write_failure(folder / "x", e)
        hint = hint or f"set {setting} to a folder you can write"
        raise FileWriteError(f"{folder}: {what} is not writable ({why}); {hint}", e.errno) from None


def check_output_file(path: str | Path, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """`path` checked as a file a command is about to write (`option`, e.g. "--out"), before any work is spent:
    not a folder, one of `suffixes` when given, and its folder writable. Raises a `UserError` naming it."""
    path = Path(path)
    try:
        return _checked_output_file(path, option, suffixes)
    except FileWriteError:
        raise
    except OSError as e:  # a name too long for the file system, a looping link on the way: the path itself
        raise FileWriteError(f"{option} {short_path(path)}: cannot be written there ({write_failure(path, e)})",
                             e.errno) from None


def short_path(path: Path, keep: int = 160) -> str:
    """`path` as text, its middle cut when it is longer than `keep` characters (a message stays readable)."""
    text = str(path)
    return text if len(text) <= keep else f"{text[: keep // 2]}...{text[-keep // 2 :]}"


# The files of a finished run folder (engine/run.py writes them, engine/saved.py reads them back).
RUN_RECORD_FILES = ("config.yaml", "result.json", "prompts.safetensors", "features.safetensors")


def _checked_output_file(path: Path, option: str, suffixes: tuple[str, ...]) -> Path:
    if not path.name or path.is_dir():
        raise FileWriteError(f"{option} {path}: is a folder, expected a file path")
    real = Path(os.path.realpath(path))  # a link onto a run's file is that file
    if real.name in RUN_RECORD_FILES and (real.parent / "result.json").is_file():
        raise FileWriteError(f"{option} {path}: would overwrite the {real.name} of the run in {real.parent}; "
                             f"give {option} another file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise FileWriteError(f"{option} {path}: expected a file name ending in {' or '.join(suffixes)}")
    # The nearest folder that exists must take a file; the missing ones are made when the file is written, so a
    # command that fails on its input later leaves no empty folder behind.
    folder = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    check = folder if folder.is_dir() else folder / "x"
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise FileWriteError(f"{path.parent}: folder of {option} is not writable ({write_failure(check, e)}); give "
                             f"{option} a path in a folder you can write", e.errno) from None
    return path
