"""files.py: every way a user's file can fail to read is one FileReadError naming it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tailprompt.errors import FileWriteError, UserError
from tailprompt.files import (
    FileReadError,
    check_output_file,
    check_writable,
    read_json,
    read_json_object,
    read_safetensors,
    read_text,
)
from tailprompt.utils import atomic_path, write_json_atomic


def _truncated_safetensors(path):
    save_file({"x": torch.ones(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("make, reader, message", [
    (None, read_json, "not found"),
    (lambda p: p.mkdir(), read_json, "is a folder"),
    (lambda p: p.write_bytes(b"\xff\xfe{"), read_json, "not UTF-8"),
    (lambda p: p.write_text('{"a": [1, 2'), read_json, "not valid JSON"),
    (lambda p: p.write_text("[1, 2]"), read_json_object, "should hold a JSON object"),
    (lambda p: p.write_bytes(b"\xff\xfe"), read_text, "not UTF-8"),
    (_truncated_safetensors, read_safetensors, "truncated or not a safetensors file"),
    (lambda p: p.write_text("{}"), read_safetensors, "truncated or not a safetensors file"),
    (None, read_safetensors, "not found"),
])
def test_unreadable_files_are_one_error_naming_the_file(tmp_path, make, reader, message):
    path = tmp_path / "input.file"
    if make is not None:
        make(path)
    with pytest.raises(FileReadError, match=message) as info:
        reader(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_check_writable_names_the_folder(tmp_path):
    check_writable(tmp_path / "new" / "runs")
    assert (tmp_path / "new" / "runs").is_dir()
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(UserError, match="blocker/runs: output folder is not writable"):
        check_writable(tmp_path / "blocker" / "runs")


@pytest.mark.parametrize("target, reason", [
    ("blocker/out.json", "blocker is a file, not a folder"),
    ("blocker/deeper/out.json", "blocker is a file, not a folder"),
    ("folder", "is a folder, expected a file path"),
])
def test_a_write_that_cannot_happen_is_one_error_naming_the_target_and_leaves_nothing(tmp_path, target, reason):
    (tmp_path / "blocker").write_text("x")
    (tmp_path / "folder").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(FileWriteError, match=reason) as info:
        write_json_atomic(tmp_path / target, {"a": 1})
    message = str(info.value)
    assert message.startswith(str(tmp_path / target)) and "\n" not in message and "[Errno" not in message
    assert isinstance(info.value, UserError) and isinstance(info.value, OSError) and info.value.errno
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no temporary file, no half-made folder


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path):
    path = tmp_path / "result.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "v": 1\n}\n' and [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.parametrize("target, suffixes, message", [
    ("dir", (), "--out {p}: is a folder, expected a file path"),
    ("p.txt", (".csv", ".json"), "--out {p}: expected a file name ending in .csv or .json"),
    ("blocker/p.csv", (), "{tmp}/blocker: folder of --out is not writable ({tmp}/blocker is a file, not a folder)"),
])
def test_output_files_are_checked_before_any_work(tmp_path, target, suffixes, message):
    (tmp_path / "dir").mkdir()
    (tmp_path / "blocker").write_text("x")
    path = tmp_path / target
    with pytest.raises(UserError) as info:
        check_output_file(path, "--out", suffixes)
    assert str(info.value).startswith(message.format(p=path, tmp=tmp_path))
    assert check_output_file(tmp_path / "new" / "p.csv", "--out", (".csv",)) == tmp_path / "new" / "p.csv"


def test_an_output_name_too_long_for_the_file_system_is_a_write_error_with_a_short_path(tmp_path):
    long_name = "a" * 300 + ".json"
    expected = r"^--out .*\.\.\..*\.json: cannot be written there \(File name too long\)"
    with pytest.raises(FileWriteError, match=expected):
        check_output_file(tmp_path / long_name, "--out", (".json",))


def test_a_target_name_near_the_limit_still_gets_a_temporary_file_beside_it(tmp_path):
    target = tmp_path / ("b" * 250 + ".json")  # its temporary name would exceed 255 bytes if it kept the whole name
    write_json_atomic(target, {"x": 1})
    assert target.read_text().strip().startswith("{") and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_safetensors_write_that_fails_on_the_disk_is_a_write_error_and_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    from tailprompt.utils import write_safetensors_atomic

    def full_disk(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(FileWriteError, match=r"p\.safetensors: cannot write prompts \(No space left on device\)"):
        write_safetensors_atomic(tmp_path / "p.safetensors", {"x": torch.zeros(2)}, what="prompts")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):  # not a disk failure: not dressed up as one
        write_safetensors_atomic(tmp_path / "p.safetensors", {"x": torch.zeros(2)})


@pytest.mark.parametrize("name", ["prompts.safetensors", "result.json", "config.yaml", "features.safetensors"])
def test_an_output_onto_a_finished_runs_own_file_is_refused(tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    for f in ("result.json", "config.yaml", "prompts.safetensors", "features.safetensors"):
        (run / f).write_text("{}")
    with pytest.raises(FileWriteError, match=f"would overwrite the {name} of the run in"):
        check_output_file(run / name, "--out")
    (tmp_path / "link.out").symlink_to(run / name)
    with pytest.raises(FileWriteError, match=f"would overwrite the {name} of the run in"):
        check_output_file(tmp_path / "link.out", "--out")
    assert check_output_file(run / "export.safetensors", "--out") == run / "export.safetensors"  # beside it: fine


def test_a_pipe_where_a_file_is_read_is_named_as_such_not_missing_or_empty(tmp_path):
    import os

    from tailprompt.backbone.checkpoints import BackboneError, file_format

    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=r"pipe\.safetensors: cannot read prompts \(not a regular file"):
        read_safetensors(fifo, "prompts")
    with pytest.raises(BackboneError, match="is not a regular file"):  # not "is empty": nothing is opened
        file_format(fifo)
