"""A checkpoint's sha256 is remembered per file identity and never served stale."""

from __future__ import annotations

import hashlib
import os

import tailprompt.utils as utils


def _hashing_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = utils.sha256_file
    monkeypatch.setattr(utils, "sha256_file", lambda path: calls.append(str(path)) or original(path))
    return calls


def test_the_second_lookup_reads_the_remembered_digest(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    calls = _hashing_calls(monkeypatch)
    first = utils.remembered_sha256(f, tmp_path / "cache")
    second = utils.remembered_sha256(f, tmp_path / "cache")
    assert first == second == hashlib.sha256(f.read_bytes()).hexdigest()
    assert len(calls) == 1


def test_a_rewritten_file_is_hashed_again_even_with_its_size_and_mtime_kept(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 64)
    before = os.stat(f)
    old = utils.remembered_sha256(f, tmp_path / "cache")
    f.write_bytes(b"b" * 64)  # same size
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime set back; ctime cannot be
    assert utils.remembered_sha256(f, tmp_path / "cache") == hashlib.sha256(b"b" * 64).hexdigest() != old


def test_a_damaged_entry_is_replaced_and_an_unwritable_cache_still_hashes(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 10)
    want = hashlib.sha256(b"x" * 10).hexdigest()
    cache = tmp_path / "cache"
    utils.remembered_sha256(f, cache)
    (entry,) = (cache / "hashes").iterdir()
    entry.write_text("not a digest")
    assert utils.remembered_sha256(f, cache) == want
    assert entry.read_text().strip() == want
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    assert utils.remembered_sha256(f, blocked) == want  # `hashes/` cannot be made under a file
