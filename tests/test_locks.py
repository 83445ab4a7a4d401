"""Cross-process file locks: one owner at a time, heartbeats, stale takeover."""

import json
import logging
import os
import subprocess
import sys
import threading
import time

from tailprompt.locks import FileLock, LockOwner, exclusive, read_lock


def write_lock(path, host, pid, job_id=None, age_s=0.0):
    path.write_text(json.dumps({"host": host, "pid": pid, "job_id": job_id, "started": time.time()}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_owner_at_a_time_and_release_frees_it(tmp_path):
    path = tmp_path / "run" / "run.lock"
    first, second = FileLock(path), FileLock(path)
    assert first.acquire()
    owner = read_lock(path).owner
    assert owner == first.owner and owner.pid == os.getpid()
    assert not second.acquire()
    first.release()
    assert not path.exists()
    assert second.acquire()
    second.release()


def test_racing_threads_get_exactly_one_lock(tmp_path):
    path = tmp_path / "x.lock"
    locks = [FileLock(path) for _ in range(8)]
    won = []
    start = threading.Barrier(len(locks))

    def take(lock):
        start.wait()
        won.append(lock.acquire())

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]
    for lock in locks:
        lock.release()


def test_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_log_line(tmp_path, caplog):
    import socket

    path = tmp_path / "run.lock"
    write_lock(path, socket.gethostname(), dead_pid())
    lock = FileLock(path)
    with caplog.at_level(logging.WARNING, logger="tailprompt.locks"):
        assert lock.acquire()
    assert "taking over the stale lock" in caplog.text and "is dead" in caplog.text
    assert read_lock(path).owner == lock.owner
    lock.release()


def test_remote_owner_is_stale_only_after_its_heartbeat_stops(tmp_path):
    path = tmp_path / "run.lock"
    write_lock(path, "another-host", 12345, age_s=10)
    assert not FileLock(path, stale_after_s=60).acquire()  # fresh heartbeat: the owner is alive
    write_lock(path, "another-host", 12345, age_s=120)
    lock = FileLock(path, stale_after_s=60)
    assert lock.acquire()
    lock.release()


def test_earlier_attempt_of_the_same_job_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    path = tmp_path / "run.lock"
    write_lock(path, "node-that-was-preempted", 4242, job_id="777")
    lock = FileLock(path)
    assert lock.acquire() and lock.owner.job_id == "777"
    lock.release()


def test_heartbeat_refreshes_the_lock_while_held(tmp_path):
    path = tmp_path / "run.lock"
    lock = FileLock(path, heartbeat_s=0.05)
    assert lock.acquire()
    os.utime(path, (time.time() - 1000, time.time() - 1000))
    time.sleep(0.3)
    assert read_lock(path).heartbeat_age_s < 5
    lock.release()


def test_release_never_removes_a_lock_someone_else_took_over(tmp_path):
    path = tmp_path / "run.lock"
    lock = FileLock(path)
    assert lock.acquire()
    thief = LockOwner("elsewhere", 1, None, time.time())
    path.write_text(json.dumps(thief.__dict__))
    lock.release()
    assert read_lock(path).owner == thief


def test_exclusive_waits_for_the_holder(tmp_path):
    path = tmp_path / "entry.lock"
    holder = FileLock(path)
    assert holder.acquire()
    order = []

    def waiter():
        with exclusive(path):
            order.append("waiter")

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    order.append("holder done")
    holder.release()
    t.join(timeout=10)
    assert order == ["holder done", "waiter"]


def test_a_damaged_lock_file_reads_as_ownerless_not_as_an_error(tmp_path):
    path = tmp_path / "run.lock"
    for content in (b"\xff\xfe\x00", b"[1]", b"{", b'{"owner": 5}', b"",
                    b'{"host": "h", "pid": "12", "job_id": null, "started": 1.0}',
                    b'{"host": 3, "pid": 12, "job_id": [1], "started": "x"}'):
        path.write_bytes(content)
        state = read_lock(path)
        assert state is not None and state.owner is None, content
