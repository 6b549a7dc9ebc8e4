"""ivon_lora.fileio: one file written atomically (JSON standard, safetensors) and read back checked, the
readers naming the file and what is wrong."""

import json
import os
import stat

import pytest
import torch

from ivon_lora.errors import RunDirError
from ivon_lora.fileio import atomic_write, read_json, read_tensors, write_json_atomic, write_tensors


def _leftovers(parent):
    return sorted(name for name in os.listdir(parent) if name.startswith("."))


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1} and stat.S_IMODE(os.stat(path).st_mode) == 0o644

    def failing(tmp):
        with open(tmp, "w") as f:
            f.write('{"x": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(path), failing)
    assert json.loads(path.read_text()) == {"x": 1} and _leftovers(tmp_path) == []


def test_the_readers_name_the_file_and_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json is missing"):
        read_json(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RunDirError, match="bad.json: not valid JSON"):
        read_json(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(RunDirError, match="list.json: expected a JSON object, got list"):
        read_json(str(tmp_path / "list.json"))

    from safetensors.torch import save_file

    save_file({"w": torch.tensor([1.0, float("nan")])}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(RunDirError, match="tensor w holds NaN or inf"):
        read_tensors(str(tmp_path / "nan.safetensors"))
    save_file({"w": torch.ones(64)}, str(tmp_path / "ok.safetensors"))
    assert torch.equal(read_tensors(str(tmp_path / "ok.safetensors"))["w"], torch.ones(64))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="cut.safetensors: not a readable safetensors file"):
        read_tensors(str(tmp_path / "cut.safetensors"))


def test_json_is_written_standard_non_finite_numbers_as_null(tmp_path):
    write_json_atomic(
        str(tmp_path / "r.json"), {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}
    )

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == {"a": None, "b": [None, 1.5],
                                                                                    "c": {"d": None}}  # fmt: skip


def test_tensors_written_atomically_read_back_equal(tmp_path):
    path = str(tmp_path / "t.safetensors")
    tensors = {"a": torch.arange(6.0).view(2, 3).t(), "b": torch.ones(4)}  # a non-contiguous view is written too
    write_tensors(path, tensors, metadata={"format": "pt"})
    read = read_tensors(path)
    assert set(read) == {"a", "b"} and all(torch.equal(read[key], tensors[key]) for key in tensors)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644 and _leftovers(tmp_path) == []
