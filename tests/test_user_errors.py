"""Every user error is exit status 2 and one line `ivon-lora CMD: ...`, before any model loads where the input alone
is wrong: one table, each row a case as a user meets it on the command line. The docs' "Errors and guarantees" page
(docs/errors.md) lists the same cases (`test_the_docs_list_exactly_the_cases_of_the_table` keeps the two in step)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from ivon_lora import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo.yaml")
ERRORS_PAGE = os.path.join(ROOT, "docs", "errors.md")


def _file(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _rows(path, *records):
    return _file(path, "".join(json.dumps(r) + "\n" for r in records))


def _copy_run(run_dir, tmp, name="copy", recipe=None, drop=()):
    """A copy of the shared run dir, its recipe changed by `recipe` (a dict of keys) and `drop`ped files removed."""
    copy = tmp / name
    shutil.copytree(run_dir, copy)
    if recipe:
        resolved = yaml.safe_load((copy / "recipe.yaml").read_text())
        (copy / "recipe.yaml").write_text(yaml.safe_dump({**resolved, **recipe}))
    for file in drop:
        (copy / file).unlink()
    return str(copy)


def _fake_checkpoint(run_dir, tmp):
    checkpoint = tmp / "other" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(os.path.join(run_dir, name), checkpoint / name)
    (checkpoint / "trainer_state.json").write_text("{}")
    return str(checkpoint)


MMLU = {"question": "q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 1}


def _users_dir(tmp):
    """A dir of the user's own (a.txt in it): no command may replace it, --overwrite or not."""
    return os.path.dirname(_file(tmp / "users-dir" / "a.txt", "keep"))


def _symlink(tmp, name, target):
    (tmp / name).symlink_to(target)
    return str(tmp / name)


def _repository(tmp):
    os.makedirs(tmp / "repo" / ".git")
    _file(tmp / "repo" / "code.py", "x = 1\n")
    return str(tmp / "repo")


def _run_with_symlink(run_dir, tmp, name="special_tokens_map.json"):
    """A copy of the run whose `name` links to a file of the user's elsewhere (a planted link)."""
    copy = _copy_run(run_dir, tmp, name="planted")
    secret = _file(tmp / "secret.json", '{"key": "secret"}')
    if os.path.lexists(os.path.join(copy, name)):
        os.remove(os.path.join(copy, name))
    os.symlink(secret, os.path.join(copy, name))
    return copy


def _merged_dir(run_dir, tmp):
    """What `ivon-lora merge --method linear` writes: an adapter and merge.json, no posterior."""
    copy = _copy_run(run_dir, tmp, name="merged", drop=["posterior.safetensors", "posterior_config.json"])
    _file(tmp / "merged" / "merge.json", json.dumps({"method": "linear", "weights": [0.5, 0.5]}))
    return copy


def _merge(run_dir, tmp, *options):
    return ["merge", run_dir, run_dir, *options, "--out", str(tmp / "m")]


def _train(tmp, *overrides, recipe=DEMO):
    return ["train", recipe, f"output_dir={tmp / 'out'}", *overrides]


# id -> (argv from (run_dir, tmp), a fragment of the one line). The id is what the errors page's list names.
CASES = {
    "recipe-key-not-text": (
        lambda r, t: [
            "train",
            _file(t / "r.yaml", f"1: 2\nmodel_name_or_path: builtin:tiny-llama\noutput_dir: {t / 'out'}\n"),
        ],
        "key 1 is not a name",
    ),
    "duplicate-yaml-key": (
        lambda r, t: ["train", _file(t / "r.yaml", "max_steps: 1\nmax_steps: 2\n")],
        "duplicate key 'max_steps'",
    ),
    "override-not-yaml": (lambda r, t: _train(t, "learning_rate=["), "Override 'learning_rate=[' on the command line"),
    "eval-override-not-yaml": (
        lambda r, t: ["eval", r, "samples=[", "--out", str(t / "e")],
        "Override 'samples=[' on the command line",
    ),
    "override-named-as-command-line": (
        lambda r, t: _train(t, "max_steps=abc"),
        "Recipe key 'max_steps' on the command line: 'abc' is not a valid int",
    ),
    "bad-recipe-value": (lambda r, t: _train(t, "max_steps=0"), "max_steps"),
    "unknown-recipe-key": (lambda r, t: _train(t, "learning_rat=1"), "did you mean 'learning_rate'"),
    "output-dir-is-a-file": (lambda r, t: _train(t, f"output_dir={_file(t / 'f', 'x')}"), "Recipe key 'output_dir'"),
    "overwrite-of-a-dir-that-is-no-run": (
        lambda r, t: _train(
            t, f"output_dir={os.path.dirname(_file(t / 'mine' / 'README.md', 'mine'))}", "overwrite_output_dir=true"
        ),
        "is not an ivon-lora run dir",
    ),
    "ivon-keys-with-another-optimizer": (
        lambda r, t: _train(t, "optim=adamw_torch", "ivon_ess=5"),
        "ivon_ess on the command line: optim is 'adamw_torch'",
    ),
    "resume-from-another-rank": (
        lambda r, t: _train(t, f"resume_from_checkpoint={_fake_checkpoint(r, t)}", "lora_rank=8"),
        "holds an adapter of lora_rank 4",
    ),
    "empty-model-dir": (
        lambda r, t: _train(t, f"model_name_or_path={os.path.dirname(_file(t / 'm' / 'x.txt', ''))}"),
        "holds no config.json and no weights",
    ),
    "model-dir-without-weights": (
        lambda r, t: _train(t, f"model_name_or_path={os.path.dirname(_file(t / 'm' / 'config.json', '{}'))}"),
        "holds no weights",
    ),
    "hub-dataset-unreachable": (lambda r, t: _train(t, "dataset=arc_easy"), "'allenai/ai2_arc' could not be loaded"),
    "eval-unknown-split": (
        lambda r, t: ["eval", r, "--split", "bogus", "--out", str(t / "e")],
        "Task 'synthetic' has no split 'bogus'",
    ),
    "eval-unknown-task": (lambda r, t: ["eval", r, "--task", "nonsense", "--out", str(t / "e")], "Unknown task"),
    "choice-text-null": (
        lambda r, t: [
            "eval",
            r,
            "--task",
            "mmlu:anatomy",
            "--split",
            "test",
            "--file",
            _rows(t / "m.jsonl", {**MMLU, "choices": ["a", None, "c", "d"]}),
            "--out",
            str(t / "e"),
        ],
        "row 0: Invalid choice B value: None (must be a non-empty text)",
    ),
    "question-an-object": (
        lambda r, t: [
            "eval",
            r,
            "--task",
            "mmlu:anatomy",
            "--split",
            "test",
            "--file",
            _rows(t / "m.jsonl", {**MMLU, "question": {"text": "q"}}),
            "--out",
            str(t / "e"),
        ],
        "row 0: Invalid question value: {'text': 'q'} (must be a non-empty text)",
    ),
    "generative-question-an-int": (
        lambda r, t: [
            "eval",
            r,
            "--task",
            "wordqa",
            "--split",
            "test",
            "--file",
            _rows(t / "w.jsonl", {"question": 3, "answers": ["x"]}),
            "--out",
            str(t / "e"),
        ],
        "Invalid question value: 3 (must be a non-empty text)",
    ),
    "bad-data-file": (
        lambda r, t: [
            "eval",
            r,
            "--file",
            _file(t / "empty.jsonl", ""),
            "--split",
            "validation",
            "--out",
            str(t / "e"),
        ],
        "the file is empty",
    ),
    "missing-run-dir": (
        lambda r, t: ["prune", str(t / "nowhere"), "--fraction", "0.1", "--out", str(t / "p")],
        "nowhere",
    ),
    "run-dir-without-recipe-or-base-model": (
        lambda r, t: ["eval", _copy_run(r, t, drop=["recipe.yaml"]), "--task", "synthetic", "--out", str(t / "e")],
        "no recipe.yaml here or in the parent dir",
    ),
    "damaged-run-file": (
        lambda r, t: ["eval", _copy_run(r, t, drop=["adapter_model.safetensors"]), "--out", str(t / "e")],
        "adapter_model.safetensors is missing",
    ),
    "remote-code-without-consent": (
        lambda r, t: ["eval", _copy_run(r, t, recipe={"trust_remote_code": True}), "--out", str(t / "e")],
        "pass --trust-remote-code",
    ),
    "generate-remote-code-without-consent": (
        lambda r, t: ["generate", _copy_run(r, t, recipe={"trust_remote_code": True}), "--prompt", "hi"],
        "pass --trust-remote-code",
    ),
    "out-inside-an-input-run": (
        lambda r, t: ["eval", r, "--out", os.path.join(r, "sub")],
        "outside every input run dir",
    ),
    "generate-out-inside-an-input-run": (
        lambda r, t: [
            "generate",
            r,
            "--prompt",
            "hi",
            "--out",
            os.path.join(r, "adapter_model.safetensors"),
            "--overwrite",
        ],
        "outside every input run dir",
    ),
    "out-not-empty": (
        lambda r, t: ["prune", r, "--fraction", "0.1", "--out", os.path.dirname(_file(t / "p" / "x", "x"))],
        "exists and is not empty",
    ),
    "out-being-written": (
        lambda r, t: ["prune", r, "--fraction", "0.1", "--out", _locked(t / "p")],
        "is being written by ivon-lora process",
    ),
    "eval-out-being-written": (
        lambda r, t: ["eval", r, "--out", _locked(t / "e")],
        "is being written by ivon-lora process",
    ),
    "export-remote-code-without-consent": (
        lambda r, t: ["export", _copy_run(r, t, recipe={"trust_remote_code": True}), "--out", str(t / "x")],
        "pass --trust-remote-code",
    ),
    "generate-prompt-longer-than-the-context": (
        lambda r, t: ["generate", r, "--prompt", "word " * 3000],
        "longer than the model's context",
    ),
    "lm-eval-hub-dataset-unreachable": (
        lambda r, t: [
            "lm-eval",
            "--model",
            "ivon-lora",
            "--model_args",
            f"run={r}",
            "--tasks",
            "arc_easy",
            "--limit",
            "2",
        ],
        "Dataset 'allenai/ai2_arc' could not be loaded",
    ),
    "eval-lm-eval-hub-dataset-unreachable": (
        lambda r, t: ["eval", r, "--lm-eval-tasks", "arc_easy", "--limit", "2", "--out", str(t / "e")],
        "Dataset 'allenai/ai2_arc' could not be loaded",
    ),
    "lm-eval-unknown-model-arg": (
        lambda r, t: [
            "lm-eval",
            "--model",
            "ivon-lora",
            "--model_args",
            f"run={r},temprature=2",
            "--tasks",
            "arc_easy",
        ],
        "Unknown model_args key(s) for model=ivon-lora: 'temprature' (did you mean",
    ),
}

# --overwrite never replaces what a command did not write: a user's dir (every command that writes one), a user's file
# (generate), a protected dir, a symlink judged by its target.
CASES.update(
    {
        f"{command}-overwrite-of-a-users-dir": (argv_of, "written by no ivon-lora command: --overwrite replaces only")
        for command, argv_of in {
            "eval": lambda r, t: ["eval", r, "--out", _users_dir(t), "--overwrite"],
            "prune": lambda r, t: ["prune", r, "--fraction", "0.1", "--out", _users_dir(t), "--overwrite"],
            "export": lambda r, t: ["export", r, "--out", _users_dir(t), "--overwrite"],
            "inspect": lambda r, t: ["inspect", r, "--out", _users_dir(t), "--overwrite"],
            "sensitivity": lambda r, t: ["sensitivity", r, "--limit", "5", "--out", _users_dir(t), "--overwrite"],
            "merge": lambda r, t: ["merge", r, r, "--method", "linear", "--out", _users_dir(t), "--overwrite"],
            "merge-sweep": lambda r, t: [
                "merge",
                r,
                r,
                "--method",
                "linear",
                "--sweep",
                "--out",
                _users_dir(t),
                "--overwrite",
            ],  # fmt: skip
        }.items()
    }
)
CASES.update(
    {
        "generate-overwrite-of-a-users-file": (
            lambda r, t: ["generate", r, "--prompt", "hi", "--out", _file(t / "notes.jsonl", "mine\n"), "--overwrite"],
            "is not a file that `ivon-lora generate` wrote",
        ),
        "out-symlink-to-a-users-dir": (
            lambda r, t: ["eval", r, "--out", _symlink(t, "link", _users_dir(t)), "--overwrite"],
            "written by no ivon-lora command",
        ),
        "out-is-a-repository": (
            lambda r, t: ["sensitivity", r, "--limit", "5", "--out", _repository(t), "--overwrite"],
            "is a repository (it holds .git): ivon-lora never replaces it",
        ),
        "out-is-the-root-dir": (
            lambda r, t: ["merge", r, r, "--method", "linear", "--out", "/", "--overwrite"],
            "'/' is the root dir",
        ),
        "run-file-a-symlink": (
            lambda r, t: ["prune", _run_with_symlink(r, t), "--fraction", "0.1", "--out", str(t / "p")],
            "special_tokens_map.json is a symbolic link, not a regular file",
        ),
        "merge-input-file-a-symlink": (
            lambda r, t: [
                "merge",
                _run_with_symlink(r, t, "adapter_config.json"),
                r,
                "--method",
                "uncertainty",
                "--out",
                str(t / "m"),
            ],  # fmt: skip
            "adapter_config.json is a symbolic link, not a regular file",
        ),
        "eval-run-file-a-symlink": (
            lambda r, t: ["eval", _run_with_symlink(r, t, "recipe.yaml"), "--out", str(t / "e")],
            "recipe.yaml is a symbolic link, not a regular file",
        ),
        "merge-weights-not-finite": (
            lambda r, t: _merge(r, t, "--method", "linear", "--weights", "nan", "1"),
            "--weights nan 1: every weight must be a finite number",
        ),
        "merge-cat-weights-infinite": (
            lambda r, t: _merge(r, t, "--method", "cat", "--weights", "inf", "1"),
            "--weights inf 1: every weight must be a finite number",
        ),
        "merge-weights-all-zero": (
            lambda r, t: _merge(r, t, "--method", "posterior", "--weights", "0", "0"),
            "all weights are 0, which merges nothing",
        ),
        "merge-negative-weight-of-a-posterior-method": (
            lambda r, t: _merge(r, t, "--method", "uncertainty", "--weights", "-1", "2"),
            "--method uncertainty weighs each run's posterior precision by its weight, which must be >= 0",
        ),
        "merge-base-precision-not-finite": (
            lambda r, t: _merge(r, t, "--method", "uncertainty", "--base-precision", "nan"),
            "Invalid base_precision value: nan (must be a finite number >= 0)",
        ),
        "sensitivity-ess-not-finite": (
            lambda r, t: ["sensitivity", r, "--ess", "inf", "--out", str(t / "s")],
            "Invalid ess value: inf (must be a finite number > 0)",
        ),
        "sensitivity-of-a-merged-dir": (
            lambda r, t: ["sensitivity", _merged_dir(r, t), "--out", str(t / "s")],
            "is a merge (--method linear), which defines no posterior",
        ),
        "refine-of-an-adamw-run": (
            lambda r, t: [
                "refine",
                _copy_run(
                    r, t, recipe={"optim": "adamw_torch"}, drop=["posterior.safetensors", "posterior_config.json"]
                ),
                "--out",
                str(t / "x"),
            ],
            "was trained with adamw_torch, not IVON: it has no posterior",
        ),
        "refine-of-a-merged-dir": (
            lambda r, t: ["refine", _merged_dir(r, t), "--out", str(t / "x")],
            "is a merge without a posterior",
        ),
        "refine-split-without-labels": (
            lambda r, t: [
                "refine",
                r,
                "--split",
                "test",
                "--file",
                _rows(
                    t / "u.jsonl",
                    {
                        "id": "q0",
                        "question": "a b c",
                        "choices": {"text": ["x", "y"], "label": ["A", "B"]},
                        "answerKey": "",
                    },
                ),  # fmt: skip
                "--out",
                str(t / "x"),
            ],
            "row 0: the record has no label",
        ),
        "refine-negative-prior-precision": (
            lambda r, t: ["refine", r, "--prior-precision", "-1", "--out", str(t / "x")],
            "Invalid prior_precision value: -1.0 (must be > 0)",
        ),
        "refine-prior-precision-not-finite": (
            lambda r, t: ["refine", r, "--prior-precision", "nan", "--out", str(t / "x")],
            "Invalid prior_precision value: nan (must be a finite number > 0)",
        ),
        "refine-grid-chosen-on-the-curvature-split": (
            lambda r, t: [
                "refine",
                r,
                "--prior-precision",
                "1e-3",
                "1e-2",
                "--select-split",
                "train",
                "--out",
                str(t / "x"),
            ],
            "--select-split train: it is the split the curvature is measured on",
        ),
        "refine-grid-chosen-on-a-missing-split": (
            lambda r, t: ["refine", r, "--ess", "1e3", "1e4", "--select-split", "dev", "--out", str(t / "x")],
            "--select-split dev: task 'synthetic' has no such split",
        ),
        "refine-grid-of-a-run-without-samples": (
            lambda r, t: [
                "refine",
                _copy_run(r, t, recipe={"final_eval_samples": 0}),
                "--ess",
                "1e3",
                "1e4",
                "--out",
                str(t / "x"),
            ],
            "evaluates with final_eval_samples 0, and the candidates' posteriors differ only in their samples: pass "
            "--select-samples",
        ),
        "refine-unknown-method": (
            lambda r, t: ["refine", r, "method=laplace", "--out", str(t / "x")],
            "Invalid method value: 'laplace' (must be one of ggn, fisher, ivon)",
        ),
        "prior-scale-without-prior-from": (
            lambda r, t: _train(t, "prior_scale=0.5"),
            "Recipe key 'prior_scale': 0.5 scales the prior of prior_from, which is not set",
        ),
        "prior-from-is-the-output-dir": (
            lambda r, t: _train(t, f"prior_from={t / 'out'}", "overwrite_output_dir=true"),
            "Recipe key 'prior_from'",
        ),
        "prior-from-a-file": (
            lambda r, t: _train(t, f"prior_from={_file(t / 'prior.txt', 'x')}"),
            "is a file, not a run dir",
        ),
    }
)

# ivon-lora compare: every refusal before anything trains or is written.
ADAMW = os.path.join(ROOT, "recipes", "demo-adamw.yaml")


def _compare(t, *options, recipes=(DEMO, ADAMW)):
    return ["compare", *recipes, *options, "--out", str(t / "cmp")]


def _other_task(t):
    with open(ADAMW) as f:
        return _file(t / "wordfacts.yaml", f.read().replace("dataset: synthetic", "dataset: wordfacts"))


CASES.update(
    {
        "compare-recipes-on-different-tasks": (
            lambda r, t: _compare(t, recipes=(DEMO, _other_task(t))),
            "the recipes train on different data",
        ),
        "compare-grid-key-the-recipe-lacks": (
            lambda r, t: _compare(t, "--grid", "ivon_beta2=0.99,0.999"),
            "demo-adamw.yaml trains with optim adamw_torch, which has no ivon_beta2",
        ),
        "compare-grid-key-unknown": (
            lambda r, t: _compare(t, "--grid", "learning_rat=0.1,0.2"),
            "has no key 'learning_rat' (did you mean 'learning_rate'?)",
        ),
        "compare-one-reported-seed": (
            lambda r, t: _compare(t, "--seeds", "1"),
            "1 reported seed(s): a comparison needs at least 2",
        ),
        "compare-overlapping-seeds": (
            lambda r, t: _compare(t, "--reported-seeds", "0", "1", "--selection-seeds", "1"),
            "seed(s) [1] are both selection and reported seeds",
        ),
        "compare-temperature-without-a-validation-split": (
            lambda r, t: _compare(t, "--baselines", "temperature", "--select-split", "dev"),
            "--baselines temperature: it is fitted on the held-out split 'dev', which task 'synthetic' does not have",
        ),
        "compare-mc-dropout-without-dropout": (
            lambda r, t: _compare(t, "--baselines", "mc_dropout"),
            "no recipe trains without a posterior with lora_dropout > 0",
        ),
        "compare-unequal-budgets": (
            lambda r, t: _compare(t, "--grid", "2:max_steps=300"),
            "the methods train on different budgets",
        ),
        "compare-out-of-another-command": (
            lambda r, t: ["compare", DEMO, ADAMW, "--out", _users_dir(t)],
            "written by no ivon-lora command: --overwrite replaces only an earlier output of `ivon-lora compare`",
        ),
    }
)

# optim: ivon under a parallelism it does not support (ivon_lora/trainer/parallelism.py), refused by the config.
CASES.update(
    {
        "ivon-with-fsdp-on-cpu": (lambda r, t: _train(t, "fsdp=full_shard"), "fsdp without an accelerator"),
        "ivon-with-fsdp1": (
            lambda r, t: _train(t, "fsdp=full_shard", "fsdp_config={fsdp_version: 1}"),
            "does not support FSDP1",
        ),
        "ivon-with-fsdp-cpu-offload": (lambda r, t: _train(t, "fsdp=full_shard offload"), "pytorch/pytorch#196562"),
        "ivon-with-deepspeed": (
            lambda r, t: _train(t, f"deepspeed={_file(t / 'ds.json', '{}')}"),
            "does not support DeepSpeed",
        ),
    }
)

# Cases that need the model (or lm-eval's, which builds it before loading a task's data) to be found.
MODEL_LOADS_FIRST = {"generate-prompt-longer-than-the-context", "lm-eval-hub-dataset-unreachable",
                     "eval-lm-eval-hub-dataset-unreachable"}  # fmt: skip
_holders = []


def _locked(out):
    """`out`, locked by another live process (as a second `ivon-lora` writing into it would be)."""
    code = "import sys, time; from ivon_lora.output_dir import lock_output_dir; lock_output_dir(sys.argv[1]); " \
           "print('locked', flush=True); time.sleep(120)"  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    _holders.append(holder)
    return str(out)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Input errors are found before a model loads: loading one fails the test (the prompt-length case excepted)."""
    from ivon_lora import modeling

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the user error was reported")

    monkeypatch.setattr(modeling, "load_base_model", fail)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_user_error_is_exit_2_with_one_line(case, run_dir, tmp_path, monkeypatch, capsys, request):
    if case not in MODEL_LOADS_FIRST:
        request.getfixturevalue("no_model_loads")
    argv_of, fragment = CASES[case]
    argv = argv_of(run_dir, tmp_path)
    before = sorted(os.listdir(run_dir))
    try:
        if argv[0] == "lm-eval" or "--lm-eval-tasks" in argv:
            # lm-eval binds a log handler to the stderr it first sees: in-process, a later test's would be closed.
            result = subprocess.run(
                [sys.executable, "-m", "ivon_lora", *argv],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"},
                timeout=300,
            )
            status, err = result.returncode, result.stderr
        else:
            status = cli.main(argv)
            err = capsys.readouterr().err
    finally:
        for holder in _holders:
            holder.kill()
            holder.wait()
        _holders.clear()
    assert status == 2, err
    # One line (log lines may precede it, as they do on any run): the error, last, and no traceback.
    lines = err.rstrip("\n").splitlines()
    assert "Traceback" not in err and sum(line.startswith("ivon-lora ") for line in lines) == 1, err
    last = lines[-1]
    assert last.startswith(f"ivon-lora {argv[0]}: ") and fragment in last, err
    if argv[0] != "lm-eval" and "--lm-eval-tasks" not in argv:  # a subprocess's stderr also holds the run's log
        assert err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # train wrote nothing
    assert sorted(os.listdir(run_dir)) == before
    users = tmp_path / "users-dir"
    if users.exists():  # untouched
        assert os.listdir(users) == ["a.txt"] and (users / "a.txt").read_text() == "keep"
    for name, text in (("notes.jsonl", "mine\n"), ("secret.json", '{"key": "secret"}')):
        assert not (tmp_path / name).exists() or (tmp_path / name).read_text() == text
    if (tmp_path / "repo").exists():
        assert sorted(os.listdir(tmp_path / "repo")) == [".git", "code.py"]


def test_the_docs_list_exactly_the_cases_of_the_table():
    text = open(ERRORS_PAGE, encoding="utf-8").read()
    section = text.split("# Errors and guarantees", 1)[1].split("\n## ", 1)[0]
    heads = [line.split(":", 1)[0] for line in section.splitlines() if line.startswith("- `")]
    listed = [case for head in heads for case in re.findall(r"`([a-z0-9-]+)`", head)]
    assert sorted(listed) == sorted(CASES)


def test_every_validation_message_has_the_one_form():
    """One form for a refused value, torch.optim's with what a valid value is: "Invalid lora_rank value: 0 (must be
    >= 1)" (`ivon_lora.validation.invalid_value`); never "lora_rank must be >= 1, got 0" nor "x 2 is not in [0, 1]"."""
    from ivon_lora.validation import Bounds, invalid_value

    assert invalid_value("lora_rank", 0, str(Bounds(1))) == "Invalid lora_rank value: 0 (must be >= 1)"
    other_forms = re.compile(r"""must be [^"']*, got \{|is not in [\[(]|\(choose from """)
    found = []
    for directory, _, files in os.walk(os.path.join(ROOT, "ivon_lora")):
        for name in [n for n in files if n.endswith(".py")]:
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as f:
                found += [
                    f"{os.path.relpath(path, ROOT)}:{i}" for i, line in enumerate(f, 1) if other_forms.search(line)
                ]
    assert found == []
