"""Nothing lost, nothing stale, nothing silent: the error contract, atomic result dirs, inputs never outputs.

Subprocess tests where the guarantee is about exit codes, files on disk or kills.
"""

import json
import os
import subprocess
import sys

import pytest

from ivon_lora import cli
from ivon_lora.artifacts import KILL_AT_ENV, POSTERIOR_CONFIG_NAME, recover_output_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ivon_lora(*argv, env=None, cwd=ROOT, code=None):
    """Run `python -m ivon_lora ARGV` in a subprocess; returns (exit status, stderr)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    command = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "ivon_lora", *argv]
    result = subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)
    return result.returncode, result.stderr


# ------------------------------------------------------------------ one error contract


def test_a_user_error_exits_2_with_one_line_and_debug_shows_the_traceback(tmp_path):
    argv = ["prune", str(tmp_path / "no-such-run"), "--fraction", "0.1", "--out", str(tmp_path / "out")]
    status, stderr = ivon_lora(*argv)
    assert status == 2
    assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr
    assert stderr.startswith("ivon-lora prune: ") and "no-such-run" in stderr
    assert not (tmp_path / "out").exists()


def test_debug_flag_or_env_var_adds_the_traceback(tmp_path, monkeypatch, capsys):
    argv = ["prune", str(tmp_path / "no-such-run"), "--fraction", "0.1", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2 and "Traceback" not in capsys.readouterr().err
    assert cli.main(["--debug", *argv]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and stderr.rstrip().splitlines()[-1].startswith("ivon-lora prune: ")
    monkeypatch.setenv("IVON_LORA_DEBUG", "1")
    assert cli.main(argv) == 2 and "Traceback" in capsys.readouterr().err


def test_an_internal_error_exits_1_with_its_traceback(tmp_path):
    code = ("import sys; from ivon_lora import cli; from ivon_lora.commands import prune; "
            "prune.prune_run = lambda *a, **k: 1 / 0; sys.exit(cli.main(sys.argv[1:]))")  # fmt: skip
    status, stderr = ivon_lora("prune", "x", "--fraction", "0.1", "--out", str(tmp_path / "out"), code=code)
    assert status == 1 and "Traceback" in stderr and "ZeroDivisionError" in stderr


# ------------------------------------------------------------------ atomic replacement


def _pruned_fraction(directory) -> float:
    config = json.loads((directory / POSTERIOR_CONFIG_NAME).read_text())
    return config["pruning"][-1]["fraction"]


def _complete(directory) -> bool:
    from ivon_lora import Posterior

    Posterior.load(str(directory))  # adapter, posterior and their config, consistent
    return (directory / "adapter_config.json").is_file() and (directory / "recipe.yaml").is_file()


def _leftovers(directory):
    return sorted(n for n in os.listdir(directory.parent) if n.startswith(f".{directory.name}."))


@pytest.mark.parametrize("point", ["staged", "aside", "swapped"])
def test_a_kill_during_an_overwrite_leaves_the_old_or_the_new_result_and_the_next_run_cleans_up(point, run_dir, tmp_path):
    out = tmp_path / "pruned"
    assert cli.main(["prune", run_dir, "--fraction", "0.1", "--out", str(out)]) == 0
    argv = ["prune", run_dir, "--fraction", "0.5", "--out", str(out), "--overwrite"]
    status, _ = ivon_lora(*argv, env={KILL_AT_ENV: point})
    assert status == -9  # SIGKILL
    if point == "aside":  # killed between the two renames: the old result is aside, whole, and comes back
        assert not out.exists() and _leftovers(out)
        recover_output_dir(str(out))
    assert _complete(out)
    assert _pruned_fraction(out) == (0.5 if point == "swapped" else 0.1)
    assert cli.main(argv) == 0  # the next run into the same place replaces it and leaves nothing stale
    assert _complete(out) and _pruned_fraction(out) == 0.5
    assert _leftovers(out) == []


def test_result_files_are_0644_and_dirs_0755(run_dir, tmp_path):
    out = tmp_path / "pruned"
    assert cli.main(["prune", run_dir, "--fraction", "0.1", "--out", str(out)]) == 0
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    for path in out.iterdir():
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path.name


# ------------------------------------------------------------------ inputs are never outputs


@pytest.mark.parametrize("where", ["equal", "inside", "parent"])
def test_out_equal_to_inside_or_containing_an_input_run_is_refused(where, run_dir, tmp_path, capsys):
    out = {"equal": run_dir, "inside": os.path.join(run_dir, "sub"), "parent": os.path.dirname(run_dir)}[where]
    before = sorted(os.listdir(run_dir))
    for argv in (["eval", run_dir, "--out", out, "--overwrite"],
                 ["prune", run_dir, "--fraction", "0.1", "--out", out, "--overwrite"],
                 ["export", run_dir, "--out", out, "--overwrite"],
                 ["inspect", run_dir, "--out", out, "--overwrite"],
                 ["eval", str(tmp_path / "other"), "--task", "synthetic", "--baseline", run_dir, "--out", out, "--overwrite"]):  # fmt: skip
        if argv[1] != run_dir:  # the baseline case needs a main run dir that exists
            os.makedirs(argv[1], exist_ok=True)
            (tmp_path / "other" / "adapter_config.json").write_text("{}")
        assert cli.main(argv) == 2, argv
        assert "outside every input run dir" in capsys.readouterr().err
    assert sorted(os.listdir(run_dir)) == before
