"""Nothing lost, nothing stale, nothing silent: the error contract, atomic result dirs, inputs never outputs.

Subprocess tests where the guarantee is about exit codes, files on disk or kills.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from ivon_lora import cli
from ivon_lora.filenames import POSTERIOR_CONFIG_NAME
from ivon_lora.output_dir import KILL_AT_ENV, recover_output_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ivon_lora(*argv, env=None, cwd=ROOT, code=None):
    """Run `python -m ivon_lora ARGV` in a subprocess; returns (exit status, stderr)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    command = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "ivon_lora", *argv]
    result = subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)
    return result.returncode, result.stderr


# ------------------------------------------------------------------ one error contract


@pytest.mark.slow
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


@pytest.mark.slow
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
def test_a_kill_during_an_overwrite_leaves_the_old_or_the_new_result_and_the_next_run_cleans_up(
    point, run_dir, tmp_path
):
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


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_result_modes_follow_the_umask(umask, file_mode, dir_mode, run_dir, tmp_path):
    out = tmp_path / "pruned"
    code = f"import os, sys; os.umask({umask}); from ivon_lora import cli; sys.exit(cli.main(sys.argv[1:]))"
    status, stderr = ivon_lora("prune", run_dir, "--fraction", "0.1", "--out", str(out), code=code)
    assert status == 0, stderr
    assert oct(out.stat().st_mode & 0o777) == oct(dir_mode)
    for path in out.iterdir():
        assert oct(path.stat().st_mode & 0o777) == oct(file_mode), path.name


def test_a_kill_between_the_renames_of_an_eval_then_eval_without_overwrite_keeps_the_old_result(run_dir, tmp_path,
                                                                                              capsys):  # fmt: skip
    out = tmp_path / "ev"
    argv = ["eval", run_dir, "--limit", "4", "--samples", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    old = (out / "eval.json").read_bytes()
    status, _ = ivon_lora(*argv, "--seed", "1", "--overwrite", env={KILL_AT_ENV: "aside"})
    assert status == -9 and not out.exists()
    assert cli.main([*argv, "--seed", "2"]) == 2  # the old result is back first, so --out is not empty
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "eval.json").read_bytes() == old and _leftovers(out) == []


def test_two_trains_into_one_output_dir_the_second_is_refused_and_a_killed_holder_blocks_nobody(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", DEMO, f"output_dir={out}", *SHORT, "max_steps=100000"]
    first = subprocess.Popen([sys.executable, "-m", "ivon_lora", *argv], stderr=subprocess.DEVNULL, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        for _ in range(600):  # until the first holds the lock
            if (tmp_path / ".run.lock").exists() and (tmp_path / ".run.lock").read_text():
                break
            time.sleep(0.1)
        assert cli.main(argv[:3] + ["seed=2", *SHORT]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is being written by ivon-lora process {first.pid}" in err, err
    finally:
        first.kill()  # SIGKILL: the lock file stays, the lock does not
        first.wait()
    assert (tmp_path / ".run.lock").exists()
    assert cli.main([*argv[:3], *SHORT, "overwrite_output_dir=true"]) == 0
    assert json.loads((out / "metrics.json").read_text())["recipe"]["max_steps"] == 4
    assert not (tmp_path / ".run.lock").exists()


def test_prune_of_a_checkpoint_leaves_its_training_state_behind(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("recipe.yaml"))
    checkpoint = run / "checkpoint-3"
    shutil.copytree(run_dir, checkpoint, ignore=shutil.ignore_patterns("recipe.yaml", "checkpoint-*"))
    shutil.copy(os.path.join(run_dir, "recipe.yaml"), run / "recipe.yaml")
    state = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth", "trainer_state.json")
    for name in state:
        (checkpoint / name).write_text("state")
    out = tmp_path / "pruned"
    assert cli.main(["prune", str(checkpoint), "--fraction", "0.1", "--out", str(out)]) == 0
    assert not set(os.listdir(out)) & set(state) and (out / "recipe.yaml").is_file()


def test_a_run_dir_whose_path_holds_an_equals_sign_is_read_as_the_path(run_dir, tmp_path):
    from ivon_lora.commands import eval as eval_command

    odd = tmp_path / "lr=0.1"
    shutil.copytree(run_dir, odd)
    options = cli.build_parser().parse_args(["eval", str(odd), "--out", str(tmp_path / "e")])
    assert eval_command.config_from(options).run_dir == str(odd)
    options = cli.build_parser().parse_args(["eval", str(odd), "seed=3", "--out", str(tmp_path / "e")])
    assert eval_command.config_from(options).seed == 3  # a key=value that names no path is still an override


def test_a_runs_remote_code_runs_only_with_the_users_own_flag(run_dir, tmp_path, capsys):
    import yaml

    run = tmp_path / "sent"
    shutil.copytree(run_dir, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    (run / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "trust_remote_code": True}))
    argv = ["generate", str(run), "--prompt", "hi", "--max-new-tokens", "2"]
    assert cli.main(argv) == 2 and "pass --trust-remote-code" in capsys.readouterr().err
    assert cli.main([*argv, "--trust-remote-code"]) == 0


def test_eval_of_a_pruned_dir_records_the_pruning_it_holds(run_dir, tmp_path):
    pruned = tmp_path / "pruned"
    assert cli.main(["prune", run_dir, "--fraction", "0.05", "--out", str(pruned)]) == 0
    assert cli.main(["eval", str(pruned), "--limit", "4", "--samples", "2", "--out", str(tmp_path / "e")]) == 0
    (run,) = json.loads((tmp_path / "e" / "eval.json").read_text())["runs"].values()
    assert run["pruning"]["fraction"] == 0.0  # none at test time...
    assert [p["fraction"] for p in run["pruning"]["in_run_dir"]["pruning"]] == [0.05]  # ...on top of the dir's


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
            (tmp_path / "other" / "adapter_config.json").write_text('{"base_model_name_or_path": "builtin:tiny-llama"}')
        assert cli.main(argv) == 2, argv
        assert "outside every input run dir" in capsys.readouterr().err
    assert sorted(os.listdir(run_dir)) == before


# ------------------------------------------------------------------ validate everything first, write nothing

DEMO = os.path.join(ROOT, "recipes", "demo.yaml")
SHORT = ["max_steps=4", "max_train_samples=32", "max_eval_samples=16", "final_eval_samples=2", "disable_tqdm=true",
         "lora_rank=2"]  # fmt: skip


@pytest.mark.parametrize(
    "override, key",
    [("learning_rate=-1", "learning_rate"), ("ivon_ess=0", "ivon_ess"), ("ivon_beta2=1.5", "ivon_beta2"),
     ("ivon_hess_init=0", "ivon_hess_init"), ("lora_target=[]", "lora_target"), ("lora_target=[q_prj]", "lora_target"),
     ("final_eval_samples=-1", "final_eval_samples"), ("max_steps=0", "max_steps"), ("max_length=0", "max_length"),
     ("resume_from_checkpoint=nowhere/checkpoint-3", "resume_from_checkpoint")],
)  # fmt: skip
def test_a_bad_recipe_value_names_its_key_and_writes_nothing(override, key, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", DEMO, f"output_dir={out}", override]) == 2
    assert key in capsys.readouterr().err
    assert not out.exists()


def test_a_duplicate_yaml_key_is_an_error_naming_it(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: builtin:tiny-llama\noutput_dir: {tmp_path / 'run'}\nlearning_rate: 0.1\n"
                      "learning_rate: 0.2\n")  # fmt: skip
    assert cli.main(["train", str(recipe)]) == 2
    assert "duplicate key 'learning_rate'" in capsys.readouterr().err
    recipe.write_text("model_name_or_path: [unclosed\n")
    assert cli.main(["train", str(recipe)]) == 2
    assert f"{recipe}: not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--samples", "-3"), ("--batch-size", "0"), ("--limit", "0")])
def test_eval_option_ranges_are_checked(flag, value, run_dir, tmp_path, capsys):
    assert cli.main(["eval", run_dir, flag, value, "--out", str(tmp_path / "out")]) == 2
    assert flag.removeprefix("--").replace("-", "_") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unknown_eval_task_is_one_line(run_dir, tmp_path, capsys):
    assert cli.main(["eval", run_dir, "--task", "nonsense", "--out", str(tmp_path / "out")]) == 2
    assert "Unknown task 'nonsense'" in capsys.readouterr().err


def test_a_failed_resume_leaves_the_finished_run_untouched(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = {name: (run / name).read_bytes() for name in os.listdir(run) if (run / name).is_file()}
    argv = ["train", str(run / "recipe.yaml"), f"output_dir={run}", "learning_rate=0.5",
            f"resume_from_checkpoint={run}/checkpoint-99"]  # fmt: skip
    assert cli.main(argv) == 2 and "resume_from_checkpoint" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in os.listdir(run) if (run / name).is_file()} == before


def test_mc_dropout_of_a_baseline_without_dropout_fails_before_any_evaluation(run_dir, tmp_path, capsys):
    baseline = tmp_path / "baseline"
    shutil.copytree(run_dir, baseline)
    for name in ("posterior.safetensors", "posterior_config.json"):
        (baseline / name).unlink()
    config = json.loads((baseline / "adapter_config.json").read_text())
    (baseline / "adapter_config.json").write_text(json.dumps({**config, "lora_dropout": 0.0}))
    argv = ["eval", run_dir, "--baseline", str(baseline), "--mc-dropout-samples", "2", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert str(baseline) in capsys.readouterr().err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ every file read is checked


def _eval_file(run_dir, path, capsys, task="synthetic"):
    assert cli.main(["eval", run_dir, "--task", task, "--split", "validation" if task == "synthetic" else "test",
                     "--file", str(path), "--out", str(path) + ".out"]) == 2  # fmt: skip
    return capsys.readouterr().err


MMLU_ROW = {"question": "q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 1}


@pytest.mark.parametrize(
    "content, task, message",
    [(b"", "synthetic", "the file is empty"),
     (b'{"question": "q"}\n{"question": \n', "synthetic", "line 2: not valid JSON"),
     (b'{"question": "caf\xe9"}\n', "synthetic", "not UTF-8 text"),
     (json.dumps({**MMLU_ROW, "choices": ["a", "b"]}).encode(), "mmlu:anatomy", "row 0: 2 choices, but every"),
     (json.dumps({**MMLU_ROW, "subject": "virology"}).encode(), "mmlu:anatomy", "row 0: subject 'virology' is not"),
     (json.dumps({"subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 1}).encode(), "mmlu:anatomy",
      "row 0: missing field")],
)  # fmt: skip
def test_a_bad_data_file_is_named_with_its_row_and_what_is_wrong(content, task, message, run_dir, tmp_path, capsys):
    path = tmp_path / "records.jsonl"
    path.write_bytes(content)
    err = _eval_file(run_dir, path, capsys, task)
    assert message in err and "records.jsonl" in err, err


def _damaged_copy(run_dir, tmp_path, name, damage):
    run = tmp_path / "damaged"
    shutil.copytree(run_dir, run)
    damage(run / name)
    return run


@pytest.mark.parametrize(
    "name, damage, message",
    [("adapter_model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable safetensors file"),
     ("adapter_model.safetensors", lambda p: p.unlink(), "adapter_model.safetensors is missing"),
     ("posterior_config.json", lambda p: p.write_text("{"), "not valid JSON"),
     ("adapter_config.json", lambda p: p.write_text("{,"), "not valid JSON")],
)  # fmt: skip
def test_a_damaged_run_dir_file_is_named(name, damage, message, run_dir, tmp_path, capsys):
    run = _damaged_copy(run_dir, tmp_path, name, damage)
    for argv in (["prune", str(run), "--fraction", "0.1", "--out", str(tmp_path / "p")],
                 ["eval", str(run), "--out", str(tmp_path / "e")]):  # fmt: skip
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and name in err, err


def test_a_non_finite_or_negative_posterior_is_refused(run_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from ivon_lora import Posterior
    from ivon_lora.errors import RunDirError

    for bad, message in ((float("nan"), "NaN or inf"), (-1.0, "negative variances")):
        run = tmp_path / f"bad{bad}"
        shutil.copytree(run_dir, run)
        variance = load_file(run / "posterior.safetensors")
        key = sorted(variance)[0]
        variance[key] = torch.full_like(variance[key], bad)
        save_file(variance, run / "posterior.safetensors")
        with pytest.raises(RunDirError, match=message):
            Posterior.load(str(run))


def test_a_model_id_that_is_not_a_local_dir_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    assert cli.main(["train", DEMO, f"output_dir={out}", "model_name_or_path=no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "model_name_or_path" in err and "no-such-org/no-such-model" in err and "HF_HUB_OFFLINE=1" in err
    assert not out.exists()


# ------------------------------------------------------------------ overwrite means overwrite; divergence


def test_overwrite_output_dir_removes_the_previous_runs_artifacts_and_nothing_else(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "checkpoint-99").mkdir()
    (run / "eval-validation").mkdir()
    (run / "eval-validation" / "eval.json").write_text("{}")
    (run / "eval-notes").mkdir()  # the user's, though named like eval's dirs: it holds no eval.json
    (run / "checkpoint-notes").mkdir()
    (run / "notes.txt").write_text("mine")
    assert cli.main(["train", DEMO, f"output_dir={run}", "optim=adamw_torch", "overwrite_output_dir=true", *SHORT]) == 0
    names = set(os.listdir(run))
    assert not names & {"posterior.safetensors", "posterior_config.json", "diagnostics.json", "checkpoint-99",
                        "eval-validation"}  # fmt: skip
    assert {"notes.txt", "eval-notes", "checkpoint-notes"} <= names
    assert json.loads((run / "metrics.json").read_text())["optimizer"] == "adamw_torch"


def test_a_posterior_beside_another_adapter_is_refused(run_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "mixed"
    shutil.copytree(run_dir, run)
    adapter = load_file(run / "adapter_model.safetensors")
    save_file({key: value + 1 for key, value in adapter.items()}, run / "adapter_model.safetensors")
    assert cli.main(["prune", str(run), "--fraction", "0.1", "--out", str(tmp_path / "p")]) == 2
    assert "mixes files of two runs" in capsys.readouterr().err


@pytest.mark.slow
def test_divergence_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = ["train", DEMO, f"output_dir={out}", "learning_rate=1e6", "ivon_clip_radius=inf", "max_steps=20",
            "save_strategy=steps", "save_steps=1", "max_train_samples=64", "disable_tqdm=true", "lora_rank=2"]  # fmt: skip
    status, stderr = ivon_lora(*argv)
    assert status == 2 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "Training diverged at step" in last and "last good checkpoint" in last, last
    assert not (out / "adapter_model.safetensors").exists() and not (out / "posterior.safetensors").exists()
    from ivon_lora import Posterior

    for checkpoint in sorted(p for p in out.iterdir() if p.name.startswith("checkpoint-")):
        Posterior.load(str(checkpoint))  # every checkpoint kept is finite (RunDirError otherwise)


# ------------------------------------------------------------------ relocatable run dirs


@pytest.mark.slow
def test_a_run_trained_on_a_relative_file_is_evaluated_from_elsewhere_after_a_copy(tmp_path):
    from ivon_lora.tasks import get_task

    work = tmp_path / "work"
    work.mkdir()
    task = get_task("synthetic")
    raw = task.generator(task.splits["train"])[:32]  # the records a local file of the task holds
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    status, stderr = ivon_lora("train", DEMO, "output_dir=run", "train_file=train.jsonl", *SHORT, cwd=work)
    assert status == 0, stderr
    shutil.copytree(work / "run", tmp_path / "moved")
    shutil.rmtree(work)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status, stderr = ivon_lora("eval", str(tmp_path / "moved"), "--limit", "8", "--samples", "2",
                               "--out", str(tmp_path / "e"), cwd=elsewhere)  # fmt: skip
    assert status == 0, stderr
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["tasks"]["synthetic"]["num_examples"] == 8


# ------------------------------------------------------------------ truncation is visible


def test_a_long_prompt_loses_its_middle_not_its_frame_or_answer_cue(llama_tokenizer):
    from ivon_lora.choice import ChoiceExample
    from ivon_lora.choice.collator import ChoiceCollator, shorten

    assert shorten(list(range(10)), 8) == [0, 1, 4, 5, 6, 7, 8, 9] and shorten([1, 2], 8) == [1, 2]
    prompt = "Instruction: pick one. Question: " + "blah " * 200 + "Choices: A. x B. y Answer:"
    example = ChoiceExample(id="0", prompt=prompt, answers=(" A", " B"), gold=0)
    batch = ChoiceCollator(llama_tokenizer, max_length=120)([{"prompt": prompt, "answers": example.answers, "gold": 0}])
    text = llama_tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert batch["input_ids"].shape[1] == 120
    assert text.startswith("Instruction: pick one.") and text.endswith("Choices: A. x B. y Answer:")


@pytest.mark.slow
def test_truncated_prompts_are_counted_per_split_in_the_report(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", DEMO, f"output_dir={out}", "max_length=16", *SHORT]) == 0
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["train"]["truncated"] == 32 and data["eval"]["truncated"] == 16  # every synthetic prompt is longer


# ------------------------------------------------------------------ reports a reader can trust


def _ties(num_classes: int, count: int):
    import torch

    return torch.full((count, num_classes), 1.0 / num_classes, dtype=torch.float64)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_blob_ece_bins_exactly_as_torchmetrics_including_ties(dtype):
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    from ivon_lora.evaluation.metrics import expected_calibration_error
    from ivon_lora.tasks import get_protocol

    generator = torch.Generator().manual_seed(0)
    cases = [(_ties(2, 40), 15), (_ties(3, 30), 15), (_ties(4, 20), 10),  # ties on a bin edge
             (torch.eye(3, dtype=torch.float64).repeat(5, 1), 10),  # confidence exactly 1
             (torch.softmax(3 * torch.randn(500, 4, generator=generator, dtype=torch.float64), dim=-1), 15)]  # fmt: skip
    edges = get_protocol("blob").ece_edges
    for probs, bins in cases:
        probs = probs.to(getattr(torch, dtype))
        gold = torch.randint(0, probs.shape[1], (len(probs),), generator=generator)
        expected = float(multiclass_calibration_error(probs, gold, num_classes=probs.shape[1], n_bins=bins, norm="l1"))
        assert expected_calibration_error(probs, gold, bins, edges) == pytest.approx(expected, abs=1e-6)
    # The ivon-lora preset's (lo, hi] differs on exact ties: a 3-way tie at 1/3 with 15 bins sits on an edge.
    probs, gold = _ties(3, 30), torch.zeros(30, dtype=torch.long)
    gold[:20] = 1
    right = expected_calibration_error(probs, gold, 15, get_protocol("ivon-lora").ece_edges)
    left = expected_calibration_error(probs, gold, 15, edges)
    assert right == pytest.approx(left)  # one bin either way: equal; the bins differ
    from ivon_lora.evaluation.metrics import reliability_bins

    assert [b["count"] for b in reliability_bins(probs, gold, 15, "right")][4] == 30
    assert [b["count"] for b in reliability_bins(probs, gold, 15, "left")][5] == 30


def test_the_reliability_diagram_draws_accuracy_confidence_counts_and_marks_empty_and_small_bins():
    import torch
    from matplotlib.patches import Rectangle

    from ivon_lora.evaluation.plots import reliability_figure

    # 100 examples at confidence 0.65, 90% right (underconfident); 4 at 0.95, all wrong; the rest of the bins empty.
    probs = torch.tensor([[0.65, 0.35]] * 100 + [[0.95, 0.05]] * 4, dtype=torch.float64)
    gold = torch.tensor([0] * 90 + [1] * 10 + [1] * 4)
    figure = reliability_figure("t", [("run", probs, gold, {})], num_bins=10)
    axis = figure.axes[0]
    bars = {round(p.get_x() + p.get_width() / 2, 3): p for p in axis.patches if isinstance(p, Rectangle)}
    assert bars[0.65].get_height() == pytest.approx(0.9)  # the bar is the accuracy, not the confidence
    assert bars[0.95].get_height() == pytest.approx(0.0) and bars[0.95].get_hatch() == "///"  # 4 examples: small
    lines = [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in axis.lines]
    assert ((0.6, 0.7), (0.65, 0.65)) in [(tuple(round(x, 3) for x in xs), tuple(round(y, 3) for y in ys))
                                          for xs, ys in lines]  # the confidence tick  # fmt: skip
    texts = [text.get_text() for text in axis.texts]
    assert "100" in texts and "4" in texts and texts.count("empty") == 8
    assert axis.get_xlabel().startswith("confidence") and axis.get_ylabel()


def test_every_report_records_the_presets_deviations_and_bin_edges(run_dir, tmp_path):
    out = tmp_path / "e"
    assert cli.main(["eval", run_dir, "--limit", "8", "--samples", "2", "--protocol", "blob", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["protocol"]["preset"]["deviations"] and report["protocol"]["ece"].endswith("(torchmetrics)")
    assert report["tasks"]["synthetic"]["truncated"]
    table = (out / "eval.md").read_text()
    assert "Deviation from the paper" in table and "[lo, hi)" in table
    metrics = json.loads((pathlib.Path(run_dir) / "metrics.json").read_text())
    assert "deviations" in metrics["protocol"]["preset"] and "truncated" in metrics["data"]["eval"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["staged", "moving"])
def test_a_train_killed_while_committing_its_final_files_is_refused_by_readers_and_completed_by_the_recovery(
    point, tmp_path
):
    from ivon_lora import Posterior
    from ivon_lora.errors import RunDirError
    from ivon_lora.output_dir import recover_final_files

    out = tmp_path / "run"
    status, _ = ivon_lora("train", DEMO, f"output_dir={out}", *SHORT, env={KILL_AT_ENV: point})
    assert status == -9
    assert not (out / "metrics.json").exists()  # not finished: metrics.json is the last file in
    before = sorted(os.listdir(out))
    with pytest.raises(RunDirError, match="interrupted while moving its final files in.*recover_final_files"):
        Posterior.load(str(out))  # a reader moves nothing
    assert sorted(os.listdir(out)) == before
    recover_final_files(str(out))  # the explicit step rolls the complete staged set forward
    Posterior.load(str(out))
    assert (out / "metrics.json").is_file() and (out / "diagnostics.json").is_file()
    assert [n for n in os.listdir(out) if n.startswith(".")] == []


# ------------------------------------------------------------------ overwrite, run dirs as data, merge numbers


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_sensitivity_overwrites_its_own_output_records_the_pruning_and_writes_standard_json(run_dir, tmp_path):
    pruned = tmp_path / "pruned"
    assert cli.main(["prune", run_dir, "--fraction", "0.3", "--out", str(pruned)]) == 0
    out = tmp_path / "sensitivity"
    for _ in range(2):  # the second replaces the first's output: it holds the marker of `ivon-lora sensitivity`
        assert cli.main(["sensitivity", str(pruned), "--limit", "4", "--out", str(out), "--overwrite"]) == 0
    summary = _strict_json((out / "summary.json").read_text())
    assert summary["posterior"]["pruning"][-1]["fraction"] == 0.3
    for line in (out / "sensitivity.jsonl").read_text().splitlines():
        _strict_json(line)


def test_prune_and_merge_copy_only_the_files_they_know_of_a_run_dir(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "notes.txt").write_text("my notes")
    (tmp_path / "secret.txt").write_text("secret")
    (run / "secret-link.txt").symlink_to(tmp_path / "secret.txt")
    assert cli.main(["prune", str(run), "--fraction", "0.1", "--out", str(tmp_path / "pruned")]) == 0
    assert cli.main(["merge", str(run), run_dir, "--method", "uncertainty", "--out", str(tmp_path / "merged")]) == 0
    for out in ("pruned", "merged"):
        names = set(os.listdir(tmp_path / out))
        assert not names & {"notes.txt", "secret-link.txt"} and "adapter_config.json" in names
        assert not any((tmp_path / out / name).is_symlink() for name in names)


def test_merge_warns_of_a_twice_given_adapter_a_clipped_rank_and_writes_no_non_finite_merge(
    run_dir, tmp_path, monkeypatch, caplog
):
    from ivon_lora.errors import UsageError
    from ivon_lora.merging import runs

    with caplog.at_level("WARNING", logger="ivon_lora.merging.runs"):
        runs.merge_runs([run_dir, run_dir], "linear", [1.5, -0.5], str(tmp_path / "m"), rank=100000)
    messages = " | ".join(record.getMessage() for record in caplog.records)
    assert "hold the same adapter: the merge counts it twice" in messages
    assert "--rank 100000: the adapted layers allow rank" in messages
    assert "a negative weight subtracts" in messages and "a weight above 1 extrapolates" in messages

    merge = runs.merge_adapters

    def overflowing(*args, **kwargs):
        tensors, config, variance = merge(*args, **kwargs)
        return {key: value * float("inf") for key, value in tensors.items()}, config, variance

    monkeypatch.setattr(runs, "merge_adapters", overflowing)
    with pytest.raises(UsageError, match="gives NaN or inf values in .*: nothing was written"):
        runs.merge_runs([run_dir, run_dir], "linear", [0.5, 0.5], str(tmp_path / "n"))
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("where", ["home", "cwd"])
def test_sensitivity_never_replaces_the_home_or_working_dir(where, run_dir, tmp_path, monkeypatch, capsys):
    """The issue's report, confined to tmp_path: `sensitivity RUN --out $HOME --overwrite` once deleted a home dir."""
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    (home / "a.txt").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    if where == "cwd":
        monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
        monkeypatch.chdir(home)
    out = str(home) if where == "home" else "."
    assert cli.main(["sensitivity", run_dir, "--limit", "5", "--out", out, "--overwrite"]) == 2
    message = "is your home dir" if where == "home" else "is the current working dir"
    assert message in capsys.readouterr().err
    assert sorted(os.listdir(home)) == [".cache", "a.txt"] and (home / "a.txt").read_text() == "keep"
