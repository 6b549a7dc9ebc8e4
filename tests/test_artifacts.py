"""The run dir's files (ivon_lora.artifacts): names equal to PEFT's, the readers' errors, the atomic file writer,
the staged output dir swapped in whole (a kill -9 at each point leaves the old or the new result), the staged final
files of a train, and what overwrite_output_dir removes."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from ivon_lora import artifacts
from ivon_lora.artifacts import (
    KILL_AT_ENV,
    METRICS_NAME,
    atomic_write,
    OUTPUT_MARKER_NAME,
    claim_output_dir,
    predictions_file_name,
    read_json,
    read_tensors,
    recover_final_files,
    recover_output_dir,
    release_output_dir,
    reliability_plot_name,
    remove_run_artifacts,
    selective_plot_name,
    staged_final_files,
    staged_output_dir,
    write_json_atomic,
)
from ivon_lora.errors import RunDirError, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_artifact_names_are_pefts():
    from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    assert (artifacts.ADAPTER_CONFIG_NAME, artifacts.ADAPTER_WEIGHTS_NAME) == (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME)


def test_task_and_run_names_become_file_names():
    assert predictions_file_name("mmlu:college_physics", "ivon") == "predictions-mmlu-college_physics-ivon.jsonl"
    assert predictions_file_name("x", "org/run") == "predictions-x-org-run.jsonl"
    assert reliability_plot_name("mmlu:anatomy") == "reliability-mmlu-anatomy.png"
    assert selective_plot_name("wordqa") == "selective-wordqa.png"


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


def test_claim_output_dir_takes_a_new_or_empty_dir_and_overwrites_only_its_own_commands_output(tmp_path):
    claim_output_dir(str(tmp_path / "new"), "prune", overwrite=False)
    release_output_dir()  # the command's end: its lock file (.new.lock, beside the dir) goes
    (tmp_path / "empty").mkdir()
    claim_output_dir(str(tmp_path / "empty"), "prune", overwrite=False)
    release_output_dir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="exists and is not empty: choose another --out, or pass --overwrite"):
        claim_output_dir(str(mine), "prune", overwrite=False)
    with pytest.raises(UsageError, match=r"holds 1 entry: a.txt, written by no ivon-lora command: --overwrite"):
        claim_output_dir(str(mine), "prune", overwrite=True)
    release_output_dir()
    with staged_output_dir(str(tmp_path / "pruned"), "prune") as staging:
        (open(os.path.join(staging, "r.txt"), "w")).write("old")
    assert json.loads((tmp_path / "pruned" / OUTPUT_MARKER_NAME).read_text()) == {"command": "prune", "format": 1}
    claim_output_dir(str(tmp_path / "pruned"), "prune", overwrite=True)  # its own earlier output
    release_output_dir()
    with pytest.raises(UsageError, match="written by `ivon-lora prune`: --overwrite replaces only an earlier output "
                                         "of `ivon-lora eval`"):  # fmt: skip
        claim_output_dir(str(tmp_path / "pruned"), "eval", overwrite=True)
    assert (mine / "a.txt").read_text() == "keep"


@pytest.mark.parametrize("where", ["home", "cwd", "ancestor of cwd", "repository", "root", "file"])
def test_a_protected_dir_is_never_claimed_nor_replaced(where, tmp_path, monkeypatch):
    target = tmp_path / "dir"
    (target / "sub").mkdir(parents=True)
    (target / "a.txt").write_text("keep")
    if where == "home":
        monkeypatch.setenv("HOME", str(target))
    elif where == "cwd":
        monkeypatch.chdir(target)
    elif where == "ancestor of cwd":
        monkeypatch.chdir(target / "sub")
    elif where == "repository":
        (target / ".git").mkdir()
    elif where == "root":
        target = "/"
    else:
        target = target / "a.txt"
    message = {"home": "is your home dir", "cwd": "is the current working dir", "root": "is the root dir",
               "ancestor of cwd": "is an ancestor of the current working dir", "file": "is a file, not a dir",
               "repository": "is a repository"}[where]  # fmt: skip
    for overwrite in (False, True):
        with pytest.raises(UsageError, match=message):
            claim_output_dir(str(target), "eval", overwrite)
    if where != "root":  # a staged write into it is refused at the swap as well, whoever the caller
        with pytest.raises(UsageError, match=message), staged_output_dir(str(target), "eval") as staging:
            (open(os.path.join(staging, "r.txt"), "w")).write("new")
        assert (tmp_path / "dir" / "a.txt").read_text() == "keep" and _leftovers(tmp_path) == []


def test_a_symlinked_out_is_judged_and_replaced_by_its_target(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(UsageError, match="written by no ivon-lora command"):
        claim_output_dir(str(link), "eval", overwrite=True)
    release_output_dir()
    target = tmp_path / "earlier-eval"
    with staged_output_dir(str(target), "eval") as staging:
        (open(os.path.join(staging, "r.txt"), "w")).write("old")
    link.unlink()
    link.symlink_to(target)
    claim_output_dir(str(link), "eval", overwrite=True)
    with staged_output_dir(str(link), "eval") as staging:
        (open(os.path.join(staging, "r.txt"), "w")).write("new")
    assert link.is_symlink() and (target / "r.txt").read_text() == "new" and (mine / "a.txt").read_text() == "keep"


def test_json_is_written_standard_non_finite_numbers_as_null(tmp_path):
    write_json_atomic(
        str(tmp_path / "r.json"), {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}
    )

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == {"a": None, "b": [None, 1.5],
                                                                                    "c": {"d": None}}  # fmt: skip


def test_a_staged_output_dir_replaces_the_old_result_only_when_the_block_succeeds(tmp_path):
    out = tmp_path / "out"
    with staged_output_dir(str(out), "test") as staging:
        assert not out.exists() and os.path.basename(staging).startswith(".out.incomplete-")
        (open(os.path.join(staging, "r.txt"), "w")).write("old")
    assert (out / "r.txt").read_text() == "old" and stat.S_IMODE(os.stat(out).st_mode) == 0o755
    with pytest.raises(RuntimeError), staged_output_dir(str(out), "test") as staging:
        (open(os.path.join(staging, "r.txt"), "w")).write("half")
        raise RuntimeError
    assert (out / "r.txt").read_text() == "old" and _leftovers(tmp_path) == []
    with staged_output_dir(str(out), "test") as staging:
        (open(os.path.join(staging, "r.txt"), "w")).write("new")
    assert (
        sorted(os.listdir(out)) == [OUTPUT_MARKER_NAME, "r.txt"]
        and (out / "r.txt").read_text() == "new"
        and _leftovers(tmp_path) == []
    )


_STAGED_WRITE = """
import os, sys
from ivon_lora.artifacts import staged_output_dir
with staged_output_dir(sys.argv[1], "test") as staging:
    with open(os.path.join(staging, "r.txt"), "w") as f:
        f.write("new")
"""


@pytest.mark.parametrize("point,expected", [("staged", "old"), ("aside", "old"), ("swapped", "new")])
def test_a_kill_at_each_point_of_the_swap_leaves_the_old_or_the_new_result(point, expected, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.txt").write_text("old")
    (out / OUTPUT_MARKER_NAME).write_text('{"command": "test", "format": 1}')  # an earlier output of the command
    env = {**os.environ, KILL_AT_ENV: point, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", _STAGED_WRITE, str(out)], env=env, capture_output=True, timeout=60)
    assert result.returncode == -9  # SIGKILL, at `point`
    recover_output_dir(str(out))  # what the next write into out does first
    # The killed writer's lock file stays: the kernel released its lock with the process, the next writer takes it.
    assert (out / "r.txt").read_text() == expected and _leftovers(tmp_path) == [".out.lock"]


_FINAL_WRITE = """
import os, sys
from ivon_lora.artifacts import staged_final_files
with staged_final_files(sys.argv[1]) as staging:
    for name, text in (("metrics.json", "{}"), ("adapter_model.safetensors", "new"), ("posterior.safetensors", "new")):
        with open(os.path.join(staging, name), "w") as f:
            f.write(text)
"""


def test_final_files_move_in_metrics_last_and_a_kill_while_moving_is_rolled_forward(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_model.safetensors").write_text("old")
    env = {**os.environ, KILL_AT_ENV: "moving", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", _FINAL_WRITE, str(run)], env=env, capture_output=True, timeout=60)
    assert result.returncode == -9
    assert not (run / METRICS_NAME).exists()  # one file moved, metrics.json (the "run is done" mark) not yet
    assert (run / ".final.complete").is_dir()
    recover_final_files(str(run))
    assert sorted(os.listdir(run)) == ["adapter_model.safetensors", METRICS_NAME, "posterior.safetensors"]
    assert (run / "adapter_model.safetensors").read_text() == "new"


def test_a_failed_final_write_leaves_the_previous_files(tmp_path):
    (tmp_path / METRICS_NAME).write_text("old")
    with pytest.raises(RuntimeError), staged_final_files(str(tmp_path)) as staging:
        (open(os.path.join(staging, METRICS_NAME), "w")).write("new")
        raise RuntimeError
    assert os.listdir(tmp_path) == [METRICS_NAME] and (tmp_path / METRICS_NAME).read_text() == "old"


def test_remove_run_artifacts_removes_a_runs_files_and_dirs_only(tmp_path):
    for name in (*artifacts.RUN_FILES, "notes.txt"):
        (tmp_path / name).write_text("x")
    for name in ("checkpoint-10", "eval-test", "eval-notes", "data"):
        (tmp_path / name).mkdir()
    (tmp_path / "eval-test" / "eval.json").write_text("{}")  # an eval dir is a run's only with its eval.json
    removed = remove_run_artifacts(str(tmp_path))
    assert sorted(removed) == sorted([*artifacts.RUN_FILES, "checkpoint-10", "eval-test"])
    assert sorted(os.listdir(tmp_path)) == ["data", "eval-notes", "notes.txt"]
    assert remove_run_artifacts(str(tmp_path / "absent")) == []
