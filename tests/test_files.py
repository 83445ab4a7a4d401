"""files.py: every way a user's file can fail to read is one FileReadError naming it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tailprompt.errors import UserError
from tailprompt.files import FileReadError, check_writable, read_json, read_json_object, read_safetensors, read_text


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
