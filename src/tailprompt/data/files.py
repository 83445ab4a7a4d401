"""File-system helpers shared by the dataset readers: listing, opening images, image identity."""

from __future__ import annotations

import os
from pathlib import Path

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
        raise DatasetError(f"{path}: missing folder ({what})")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: missing file ({what})")
    return path


def subdirs(path: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `path`."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def image_files(path: Path) -> list[str]:
    """Sorted names of the non-hidden image files directly inside `path`."""
    return sorted(
        e.name
        for e in os.scandir(path)
        if not e.name.startswith(".") and e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
    )


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file; a missing or undecodable file is a `DatasetError` naming it."""
    require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text ({what})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def open_rgb(path: Path) -> Image.Image:
    """Decode one image file to RGB; unreadable or missing files raise `DatasetError` naming the path."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image listed by the dataset is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from None


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
