"""File locks that work across processes, jobs and hosts sharing a file system.

A lock is a small JSON file created with `O_CREAT | O_EXCL` (atomic on local file systems and on NFS v3+),
holding its owner: host, pid, job id (SLURM's or submitit's, when there is one) and start time. While it
is held, a thread refreshes the file's modification time every `heartbeat_s`: that time is the heartbeat.

A lock is stale, and is taken over with a log line, when its owner is a dead process on this host, when it
was left by an earlier attempt of this very job (a requeued SLURM job keeps its id), or when its heartbeat
is older than `stale_after_s` (an owner on another host that died or lost the file system). A takeover
renames the stale file away first, so of two processes taking over at once only one wins.

Used by the sweep (one lock per run folder, so a run is never trained twice at once) and by the shared
caches (one writer per entry; the others wait, then reuse what it wrote).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0  # how often a held lock's heartbeat is refreshed
STALE_AFTER_S = 300.0  # a lock whose heartbeat is older than this is taken over


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    job_id: str | None
    started: float  # time.time() when the lock was taken


@dataclass(frozen=True)
class LockState:
    """What a lock file says, and how old its heartbeat is."""

    owner: LockOwner | None  # None: the file exists but is unreadable (being written, or damaged)
    heartbeat_age_s: float


def current_job_id() -> str | None:
    """The scheduler's id of the job this process runs in (SLURM array task id when in an array), if any."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or None


def this_owner() -> LockOwner:
    return LockOwner(socket.gethostname(), os.getpid(), current_job_id(), time.time())


def read_lock(path: Path) -> LockState | None:
    """The lock at `path`, or None when there is none."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    try:
        owner: LockOwner | None = LockOwner(**json.loads(text))
    except (ValueError, TypeError):  # being written, or damaged: no owner to name
        owner = None
    if owner is not None and not _well_typed(owner):
        owner = None
    return LockState(owner, max(0.0, time.time() - mtime))


def _well_typed(owner: LockOwner) -> bool:
    """The fields a lock's JSON must hold for `stale_reason` and `describe` to read them."""
    return (isinstance(owner.host, str) and isinstance(owner.pid, int) and not isinstance(owner.pid, bool)
            and (owner.job_id is None or isinstance(owner.job_id, str))
            and isinstance(owner.started, (int, float)) and not isinstance(owner.started, bool))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by another user
    return True


def stale_reason(state: LockState, stale_after_s: float, me: LockOwner) -> str | None:
    """Why the lock may be taken over, or None while its owner is presumed alive."""
    owner = state.owner
    if owner is not None and owner.host == me.host and owner.pid != me.pid and not pid_alive(owner.pid):
        return f"its owner (pid {owner.pid} on {owner.host}) is dead"
    if owner is not None and owner.job_id and owner.job_id == me.job_id and owner.pid != me.pid:
        return f"it was left by an earlier attempt of this job ({owner.job_id})"
    if state.heartbeat_age_s > stale_after_s:
        return f"its heartbeat is {state.heartbeat_age_s:.0f} s old (limit {stale_after_s:.0f} s)"
    return None


def describe(owner: LockOwner | None) -> str:
    if owner is None:
        return "unknown owner"
    job = f"job {owner.job_id}, " if owner.job_id else ""
    return f"{job}pid {owner.pid} on {owner.host}"


class FileLock:
    """A held-or-not lock on `path`; `acquire()` does not block, `wait()` does."""

    def __init__(self, path: str | os.PathLike[str], heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.owner: LockOwner | None = None  # set while held
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.owner is not None

    def acquire(self) -> bool:
        """Take the lock if it is free or stale; False when a live owner holds it."""
        me = this_owner()
        for _ in range(3):  # a takeover race may need a second look
            if self._create(me):
                return True
            state = read_lock(self.path)
            if state is None:
                continue  # released between our create and our read
            if state.owner is None and state.heartbeat_age_s < 5:
                return False  # just being written by its new owner
            reason = stale_reason(state, self.stale_after_s, me) or (
                "it is unreadable" if state.owner is None else None)
            if reason is None:
                return False
            if self._break(reason, state):
                continue
        return False

    def wait(self, poll_s: float = 0.5, on_wait: str | None = None) -> None:
        """Block until the lock is ours; `on_wait` is logged once if it was busy."""
        logged = False
        while not self.acquire():
            if on_wait and not logged:
                log.info("%s (held by %s)", on_wait, describe((read_lock(self.path) or LockState(None, 0)).owner))
                logged = True
            time.sleep(poll_s)

    def release(self) -> None:
        if self.owner is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        state = read_lock(self.path)
        if state is not None and state.owner == self.owner:  # never delete a lock someone took over
            self.path.unlink(missing_ok=True)
        self.owner = None

    def __enter__(self) -> FileLock:
        self.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _create(self, me: LockOwner) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(me), f)
        self.owner = me
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return True

    def _break(self, reason: str, state: LockState) -> bool:
        """Move a stale lock aside (only one of several racing processes succeeds)."""
        aside = self.path.with_name(f".{self.path.name}.stale.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else moved it; try to create again
        moved = read_lock(aside)
        if moved is not None and moved.owner != state.owner:  # we moved a fresh lock: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        log.warning("taking over the stale lock %s: %s (was %s)", self.path, reason, describe(state.owner))
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                log.warning("lock %s vanished while held", self.path)
                return


@contextmanager
def exclusive(path: str | os.PathLike[str], waiting: str | None = None) -> Iterator[FileLock]:
    """Hold the lock at `path` for the block, waiting for it as long as it is held by a live owner."""
    lock = FileLock(path)
    lock.wait(on_wait=waiting)
    try:
        yield lock
    finally:
        lock.release()
