"""ivon_lora.output_dir: an output dir claimed (new, empty or its own command's earlier output; never a protected
dir), staged and swapped in whole (a kill -9 at each point leaves the old or the new result), the staged final files
of a train, what overwrite_output_dir removes, and every command that writes an output dir claiming it here."""

import ast
import json
import os
import stat
import subprocess
import sys

import pytest

from ivon_lora import filenames
from ivon_lora.errors import UsageError
from ivon_lora.filenames import METRICS_NAME, OUTPUT_MARKER_NAME
from ivon_lora.output_dir import (
    KILL_AT_ENV,
    claim_output_dir,
    claim_resumable_output_dir,
    recover_final_files,
    recover_output_dir,
    release_output_dir,
    remove_run_artifacts,
    staged_final_files,
    staged_output_dir,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leftovers(parent):
    return sorted(name for name in os.listdir(parent) if name.startswith("."))


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


def test_a_resumable_claim_takes_a_new_dir_or_its_own_commands_and_refuses_any_other(tmp_path):
    out = tmp_path / "compare"
    assert claim_resumable_output_dir(str(out), "compare") is False  # new: created and marked now
    assert json.loads((out / OUTPUT_MARKER_NAME).read_text()) == {"command": "compare", "format": 1}
    (out / "runs").mkdir()
    release_output_dir()
    assert claim_resumable_output_dir(str(out), "compare") is True  # its own earlier output: resumed
    assert (out / "runs").is_dir()
    release_output_dir()
    with pytest.raises(UsageError, match="written by `ivon-lora compare`"):
        claim_resumable_output_dir(str(out), "eval")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("keep")
    with pytest.raises(UsageError, match="written by no ivon-lora command"):
        claim_resumable_output_dir(str(mine), "compare")
    with pytest.raises(UsageError, match="is inside the run dir"):
        claim_resumable_output_dir(str(mine / "out"), "compare", {"run dir": str(mine)})
    release_output_dir()
    assert sorted(os.listdir(mine)) == ["a.txt"]


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
from ivon_lora.output_dir import staged_output_dir
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
from ivon_lora.output_dir import staged_final_files
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
    for name in (*filenames.RUN_FILES, "notes.txt"):
        (tmp_path / name).write_text("x")
    for name in ("checkpoint-10", "eval-test", "eval-notes", "data"):
        (tmp_path / name).mkdir()
    (tmp_path / "eval-test" / "eval.json").write_text("{}")  # an eval dir is a run's only with its eval.json
    removed = remove_run_artifacts(str(tmp_path))
    assert sorted(removed) == sorted([*filenames.RUN_FILES, "checkpoint-10", "eval-test"])
    assert sorted(os.listdir(tmp_path)) == ["data", "eval-notes", "notes.txt"]
    assert remove_run_artifacts(str(tmp_path / "absent")) == []


# ------------------------------------------------------------------ one claim, used by every command

PACKAGE = os.path.join(ROOT, "ivon_lora")
# Every command that writes an output dir (train writes its run dir through the recipe's checks and
# staged_final_files; generate writes one file; lm-eval hands --output_path to lm-evaluation-harness).
WRITES_AN_OUTPUT_DIR = {"eval", "prune", "export", "inspect", "sensitivity", "merge", "refine"}
# The claim's parts, which only output_dir.py calls, except where a caller is named: train's recipe check locks its
# output_dir and checks what overwrite_output_dir may remove; generate's --out is a file, kept apart from the run dir;
# the command line releases every lock at the end.
CLAIM_PARTS = {"check_placeable": set(), "check_replaceable": set(), "protected_reason": set(),
               "recover_output_dir": set(), "read_output_marker": set(), "write_output_marker": set(),
               "lock_output_dir": {"config/recipe.py"}, "check_overwritable": {"config/recipe.py"},
               "check_out_apart": {"commands/generate.py"}, "release_output_dir": {"cli.py"}}  # fmt: skip


def _calls():
    """(module path relative to ivon_lora/, called name, first two arguments) of every call in the package."""
    for directory, _, files in os.walk(PACKAGE):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(directory, file)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                    yield os.path.relpath(path, PACKAGE), name, node.args[:2]


def _command_argument(args) -> str | None:
    return args[1].value if len(args) > 1 and isinstance(args[1], ast.Constant) else None


def test_every_command_that_writes_an_output_dir_claims_it_here_and_none_repeats_the_checks():
    calls = list(_calls())
    claimed = {_command_argument(args) for _, name, args in calls
               if name in ("claim_output_dir", "claim_resumable_output_dir")}  # fmt: skip
    staged = {_command_argument(args) for _, name, args in calls if name == "staged_output_dir"}
    assert WRITES_AN_OUTPUT_DIR <= claimed  # each command's name is claimed somewhere
    assert staged - {None} <= claimed  # nothing is staged under a name no claim took
    elsewhere = {(module, name) for module, name, _ in calls if name in CLAIM_PARTS and module != "output_dir.py"
                 and module not in CLAIM_PARTS[name]}  # fmt: skip
    assert elsewhere == set()


# ------------------------------------------------------------------ loading never moves files


def _snapshot(directory):
    """Every path under `directory` with its bytes (None for a dir)."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), directory)] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


def _interrupted_final_write(tmp_path):
    """A run dir (a previous run's adapter, posterior and recipe) whose next train was killed moving its final
    files in: the adapter is the new one, the posterior and metrics.json wait in .final.complete."""
    import torch

    from ivon_lora.posterior import Posterior

    run = tmp_path / "run"
    old = Posterior({"w": torch.ones(2, 2)}, {"w": torch.full((2, 2), 0.5)}, {"format_version": 2})
    old.save(str(run), include_mean=True)
    (run / filenames.ADAPTER_CONFIG_NAME).write_text(json.dumps({"base_model_name_or_path": "builtin:tiny-llama"}))
    new = Posterior({"w": torch.zeros(2, 2)}, {"w": torch.full((2, 2), 0.25)}, {"format_version": 2})
    new.save(str(tmp_path / "new"), include_mean=True)
    script = (
        "import os, shutil, sys\n"
        "from ivon_lora.output_dir import staged_final_files\n"
        "with staged_final_files(sys.argv[1]) as staging:\n"
        "    for name in sorted(os.listdir(sys.argv[2])):\n"
        "        shutil.copyfile(os.path.join(sys.argv[2], name), os.path.join(staging, name))\n"
        "    open(os.path.join(staging, 'metrics.json'), 'w').write('{}')\n"
    )
    env = {**os.environ, KILL_AT_ENV: "moving", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", script, str(run), str(tmp_path / "new")], env=env,
                            capture_output=True, timeout=60)  # fmt: skip
    assert result.returncode == -9 and (run / filenames.FINAL_COMPLETE_NAME).is_dir()
    return run


def test_readers_refuse_an_interrupted_final_write_and_leave_every_file_where_it_was(tmp_path):
    from ivon_lora.errors import RunDirError
    from ivon_lora.posterior import Posterior
    from ivon_lora.rundir import describe_run, load_run

    run = _interrupted_final_write(tmp_path)
    before = _snapshot(run)
    for read in (Posterior.load, lambda d: describe_run(d, set()), load_run):
        with pytest.raises(RunDirError, match=rf"{run}: `ivon-lora train` was interrupted while moving its final "
                                              r"files in .*recover_final_files\('.*run'\)"):  # fmt: skip
            read(str(run))
        assert _snapshot(run) == before  # names and bytes: nothing moved, nothing written
    assert sorted(os.listdir(tmp_path)) == ["new", "run"]  # no lock file left beside it either


def test_the_explicit_recovery_completes_the_move_and_the_run_loads_as_written(tmp_path):
    import torch

    from ivon_lora.posterior import Posterior

    run = _interrupted_final_write(tmp_path)
    recover_final_files(str(run))
    assert not (run / filenames.FINAL_COMPLETE_NAME).exists() and (run / METRICS_NAME).is_file()
    loaded = Posterior.load(str(run))  # the new adapter with the new posterior: one run's files
    assert torch.equal(loaded.mean["w"], torch.zeros(2, 2)) and torch.equal(
        loaded.variance["w"], torch.full((2, 2), 0.25)
    )
    assert sorted(os.listdir(tmp_path)) == ["new", "run"]  # the recovery's lock is released, its file removed


def test_the_recovery_never_moves_files_under_a_train_still_writing_them(tmp_path):
    from ivon_lora.errors import OutputDirLockedError

    run = _interrupted_final_write(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ivon_lora.output_dir import "
                               "lock_output_dir; lock_output_dir(sys.argv[1]); print('locked', flush=True); "
                               "time.sleep(60)", str(run)], env={**os.environ, "PYTHONPATH": ROOT},
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        with pytest.raises(OutputDirLockedError, match="is being written by ivon-lora process"):
            recover_final_files(str(run))
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
