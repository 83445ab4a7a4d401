"""File-system helpers shared by the dataset readers: listing, opening images, image identity."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from tailprompt.data.types import Item
from tailprompt.errors import UserError

# Folder-scanned readers keep only these (lower-cased) suffixes; the reference keeps every non-hidden
# file, which only differs for stray non-images such as Thumbs.db that would crash it later.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


class DatasetError(UserError, ValueError):
    """The dataset on disk does not match the expected layout; the message names the path (a `UserError`)."""


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is a folder, else a `DatasetError` saying what was expected there."""
    if not path.is_dir():
        if path.exists():
            raise DatasetError(f"{path}: expected a folder ({what}), found a file")
        raise DatasetError(f"{path}: missing folder ({what})")
    return path


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else a `DatasetError` saying what was expected there."""
    if not path.is_file():
        if path.is_dir():
            raise DatasetError(f"{path}: expected a file ({what}), found a folder")
        if path.exists():  # a FIFO would block the read forever
            raise DatasetError(f"{path}: expected a file ({what}), found a pipe, socket or device")
        raise DatasetError(f"{path}: missing file ({what})")
    return path


def _scan(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except NotADirectoryError:
        raise DatasetError(f"{path}: expected a folder, found a file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot list folder ({e.strerror or e})") from None


def subdirs(path: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `path`."""
    return sorted(e.name for e in _scan(path) if not e.name.startswith(".") and e.is_dir())


def is_image_name(name: str) -> bool:
    """A non-hidden file name with an image suffix (skips `.DS_Store`, `Thumbs.db`, `desktop.ini`, ...)."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def image_files(path: Path) -> list[str]:
    """Sorted names of the non-hidden image files directly inside `path`."""
    return sorted(e.name for e in _scan(path) if is_image_name(e.name) and e.is_file())


def image_files_below(path: Path) -> list[str]:
    """Sorted `/`-joined paths (relative to `path`) of the image files in `path` and its non-hidden sub-folders,
    as torchvision's `ImageFolder` finds them inside one class folder."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True, onerror=_walk_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(path).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        out += [prefix + f for f in filenames if is_image_name(f) and os.path.isfile(os.path.join(dirpath, f))]
    return sorted(out)


def _walk_error(e: OSError) -> None:
    raise DatasetError(f"{e.filename}: cannot list folder ({e.strerror or e})")


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a BOM dropped); a missing, unreadable or undecodable file is a `DatasetError`."""
    require_file(path, what)
    try:
        return path.read_bytes().decode("utf-8-sig")  # a BOM (Windows editors) is not part of the first line
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text (expected {what})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def numbered_lines(path: Path, what: str, comments: bool = True) -> list[tuple[int, str]]:
    """`(line number, stripped line)` of the non-blank lines of a text file, `#` comment lines skipped.

    CRLF endings, a UTF-8 BOM and surrounding whitespace are accepted. A missing, unreadable, undecodable
    or empty file is a `DatasetError` naming it and `what` was expected in it.
    """
    out = []
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        line = line.strip()
        if line and not (comments and line.startswith("#")):
            out.append((n, line))
    if not out:
        raise DatasetError(f"{path}: empty file (expected {what})")
    return out


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file (see `numbered_lines`)."""
    return [line for _, line in numbered_lines(path, what)]


def read_json(path: Path, what: str, malformed: str = "not valid JSON") -> Any:
    """A JSON file's value; a missing, unreadable or malformed file is a `DatasetError` naming it."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, a huge number, nesting too deep
        raise DatasetError(f"{path}: {malformed} ({str(e)[:200]}; expected {what})") from None


_LABEL = re.compile(r"[0-9]{1,100}")  # int() refuses over 4300 digits; no real label has 100


def parse_label(token: str, where: str, first: int, count: int | None, what: str = "label") -> int:
    """A label written as a decimal in `first..first+count-1` (or `>= first` without `count`) minus `first`.

    `where` (`file:line`) starts the error: a sign, a non-decimal or an out-of-range value is named with
    the expected range.
    """
    expected = f"in {first}..{first + count - 1}" if count is not None else f"(an integer >= {first})"
    if not _LABEL.fullmatch(token) or (count is not None and not first <= int(token) < first + count):
        raise DatasetError(f"{where}: expected a {what} {expected}, got {token[:40]!r}")
    if int(token) < first:
        raise DatasetError(f"{where}: expected a {what} {expected}, got {token!r}")
    return int(token) - first


def relative_path(rel: str, where: str, inside: str) -> str:
    """`rel` if it is a relative `/`-separated path that stays inside the folder named `inside`.

    An empty, absolute (`/x`, `C:/x`, `\\x`) or escaping (`..`) path, or one with a control character, is a
    `DatasetError` starting with `where` (`file:line`).
    """
    parts = rel.split("/")
    if (
        not rel
        or rel.startswith(("/", "\\"))
        or re.match(r"[A-Za-z]:[/\\]", rel)
        or ".." in parts
        or "" in parts
        or any(ord(c) < 32 for c in rel)
    ):
        raise DatasetError(f"{where}: expected a relative image path inside {inside}, got {rel[:300]!r}")
    return rel


class Duplicates:
    """Remembers where each key was first seen; a repeat is a `DatasetError` naming both places."""

    def __init__(self, what: str = "entry") -> None:
        self.what = what
        self.seen: dict[Any, str] = {}

    def add(self, key: Any, where: str, at: str) -> None:
        """Record `key` found at `at` (e.g. `line 3`); `where` (e.g. `file:line`) starts a repeat's error."""
        if key in self.seen:
            raise DatasetError(f"{where}: duplicate {self.what} {key!r} (first at {self.seen[key]})")
        self.seen[key] = at


# What decoding a damaged or hostile image file raises: PIL's "not an image", its refusal of a decompression
# bomb (a header claiming billions of pixels; not an OSError), truncated data (OSError), broken headers
# (SyntaxError in some plugins) and impossible sizes or modes (ValueError).
UNREADABLE_IMAGE: tuple[type[Exception], ...] = (
    UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
)


def open_image(path: Path) -> Image.Image:
    """`PIL.Image.open(path)`, whose warnings (a very large image's ``DecompressionBombWarning``) name the file;
    PIL's own do not, so a folder of images would warn about one of them without saying which."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = Image.open(path)
    for w in caught:
        warnings.warn(f"{path}: {w.message}", w.category, stacklevel=2)
    return img


def open_rgb(path: Path) -> Image.Image:
    """Decode one image file to RGB; unreadable or missing files raise `DatasetError` naming the path."""
    try:
        with open_image(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image listed by the dataset is missing") from None
    except UNREADABLE_IMAGE as e:
        raise DatasetError(f"{path}: cannot read image ({' '.join(str(e).split())[:200]})") from None


class FileImages:
    """`load_image` / `image_identity` for a dataset whose item keys are paths under `folder`.

    A small picklable class (not closures) so DataLoader workers can receive it.

    The identity is the resolved absolute path plus the file's size and `st_mtime_ns`: any write to the
    file changes it, and it costs one `stat` per image, whereas a content hash would read every image
    (140 GB for ImageNet) on every run. Moving the dataset folder or `touch`ing a file only causes a
    recompute, never a stale hit.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()

    def path(self, item: Item) -> Path:
        return self.folder / item.key

    def load(self, item: Item) -> Image.Image:
        return open_rgb(self.path(item))

    def identity(self, item: Item) -> str:
        path = self.path(item)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DatasetError(f"{path}: image listed by the dataset is missing") from None
        return f"file:{path}:{st.st_size}:{st.st_mtime_ns}"
