"""Small process-level helpers: threads, seeding, atomic writes, hashing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and numpy load where they are used: `tailprompt list presets` needs neither
    import torch


def free_cores() -> int:
    """Cores not already busy: oversubscribed torch threads made runs 5-15x slower on 2-core machines.

    `TAILPROMPT_THREADS` overrides the estimate.
    """
    env = os.environ.get("TAILPROMPT_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    try:
        busy = int(round(os.getloadavg()[0]))
    except OSError:  # pragma: no cover
        busy = 0
    return max(1, n - busy)


def configure_threads(n: int | None = None) -> int:
    """Set torch intra-op threads to `n` (default: the free cores) and return the value used."""
    import torch

    n = n or free_cores()
    torch.set_num_threads(n)
    return n


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Reading a checkpoint frees a file-sized state dict that glibc keeps in its arenas: after loading a
    ViT-B/16 the process held 1,343-1,458 MB, 1,074 MB once trimmed (benchmarks/README.md, "Seventh session").
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others: no malloc_trim
        return
    trim(0)


def resolve_device(name: str, setting: str = "backbone.device") -> torch.device:
    """`auto` -> CUDA when available, else CPU; any other name as torch spells it (`cpu`, `cuda:1`).

    A name torch does not know, or a device this machine does not have, is a `ConfigError` naming
    `setting`, the option that gave it (a user's typo, not a crash deep inside the first tensor transfer).
    """
    import torch

    from tailprompt.schema import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{setting}: {name!r} is not a device name "
                          f"(expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"{setting}: {name!r} requested but this machine has no usable CUDA device; "
                              f"use auto or cpu")
        if device.index is not None and device.index >= n:
            raise ConfigError(f"{setting}: {name!r} does not exist (CUDA devices: 0..{n - 1})")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{setting}: {name!r} requested but MPS is not available here; use auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{setting}: {name!r} is not supported (expected auto, cpu, cuda or cuda:N)")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the reference's set_random_seed)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextmanager
def atomic_path(path: str | os.PathLike[str], what: str = "file") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only if the block succeeds.

    A crash leaves no half-written file, and concurrent writers of the same path each rename a
    complete file (last one wins). A write that fails for a file-system reason (the folder is a file, is
    not writable, the target is a folder, the disk is full) is a `FileWriteError` naming `path` (a `what`).
    """
    from tailprompt.errors import FileWriteError
    from tailprompt.files import write_failure

    path = Path(path)
    tmp_path: Path | None = None
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder, expected a file path")
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name keeps at most 100 characters of the target's, so it fits where the target does.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask), so
        # colleagues sharing a results folder can read it
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except FileWriteError:
        raise
    except OSError as e:
        raise FileWriteError(f"{path}: cannot write {what} ({write_failure(path, e)})", e.errno) from e
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask (reading it means setting it; it is restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str, what: str = "file") -> None:
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, what: str = "JSON file") -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", what)


def write_safetensors_atomic(path: str | os.PathLike[str], tensors: dict[str, Any],
                             metadata: dict[str, str] | None = None, what: str = "file") -> None:
    """`safetensors.torch.save_file` through `atomic_path`: a failed write (a full disk) is a `FileWriteError`
    naming `path`, as for the JSON and text writers; safetensors reports it as its own error type."""
    from safetensors.torch import save_file

    with atomic_path(path, what) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as e:  # SafetensorError: "I/O error: No space left on device (os error 28)"
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from e


def _json_default(obj: Any) -> Any:
    # An object can only be a numpy or torch value if its library is already loaded.
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if np is not None and isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if np is not None and isinstance(obj, np.ndarray):
        return obj.tolist()
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def default_cache_dir() -> Path:
    """`$TAILPROMPT_CACHE`, else `~/.cache/tailprompt`: feature caches, cluster choices, the `list` catalogue,
    checkpoint hashes."""
    env = os.environ.get("TAILPROMPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tailprompt"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remembered_sha256(path: str | os.PathLike[str], cache_dir: Path | None = None) -> str:
    """`sha256_file(path)`, remembered in `cache_dir/hashes/` (default: `default_cache_dir()`).

    The entry is keyed by the file's device, inode, size, mtime and ctime: writing the file, or moving another
    file into its place, changes its ctime (which no tool can set back), so an entry is never stale. A
    checkpoint is hashed once per machine instead of at every run's start (ViT-B/16, 350 MB: ~0.4 s; ViT-L/14
    about three times that). An unreadable or damaged entry, or a cache that cannot be written, only costs the
    hash.
    """
    st = os.stat(path)
    key = stable_hash([str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    entry = (cache_dir if cache_dir is not None else default_cache_dir()) / "hashes" / f"{key}.sha256"
    try:
        known = entry.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", known):
            return known
    except OSError:
        pass
    digest = sha256_file(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(entry, digest + "\n")
    except OSError:
        pass
    return digest


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short hex digest of a JSON-serialisable object (key order independent)."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
