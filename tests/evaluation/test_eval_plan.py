"""`ivon_lora.evaluation.plan`: one rule for S (and the seed) on every kind, recorded with its source; and one
path: train's final evaluation, `ivon-lora eval` and the calibration study's scoring give the same numbers."""

import dataclasses
import importlib.util
import json
import os

import pytest

from ivon_lora import cli
from ivon_lora.config import EvalConfig
from ivon_lora.evaluation.plan import EvalPlan, resolve_plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _assert_equal_to_1e9(got, expected, where="") -> None:
    """Nested metrics equal: the same keys, numbers within 1e-9, everything else equal."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            _assert_equal_to_1e9(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            _assert_equal_to_1e9(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-9, rel=0), where
    else:
        assert got == expected, where


def _eval(tmp_path, name, *args) -> dict:
    out = tmp_path / name
    assert cli.main(["eval", *args, "--out", str(out)]) == 0
    return json.loads((out / "eval.json").read_text())


def test_the_plan_is_frozen_and_records_where_s_and_the_seed_came_from(run_dir):
    plan, described = resolve_plan(EvalConfig(run_dir=run_dir))
    assert (plan.samples, plan.samples_source) == (2, "the run's recipe (final_eval_samples)")  # the run's own
    assert (plan.seed, plan.seed_source) == (0, "the run's recipe (eval_seed)")
    assert plan.kind == "multiple_choice" and plan.splits == ("validation",) and described[0]["dir"] == plan.run_dir
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.samples = 3
    given, _ = resolve_plan(EvalConfig(run_dir=run_dir, samples=5, seed=7))
    assert (given.samples, given.samples_source, given.seed) == (5, "command line (--samples)", 7)
    assert json.loads(json.dumps(given.as_dict()))["samples"] == 5
    assert set(given.as_dict()) == {field.name for field in dataclasses.fields(EvalPlan)}


def test_s_is_the_runs_final_eval_samples_on_every_kind_unless_the_command_line_says_otherwise(run_dir, tmp_path):
    """The run was trained with final_eval_samples 2 (its metrics.json used 2): eval uses 2 for multiple choice,
    generation and (below) SFT, and says so; --samples overrides it everywhere."""
    with open(os.path.join(run_dir, "metrics.json")) as f:
        assert json.load(f)["metrics"]["sampled"]["samples"] == 2
    choice = _eval(tmp_path, "choice", run_dir, "--limit", "8")
    assert choice["plan"]["samples"] == 2 and choice["protocol"]["samples"] == 2
    assert choice["runs"]["ivon"]["samples"] == 2 and choice["runs"]["ivon"]["sample_kind"] == "posterior"
    (entry,) = choice["tasks"].values()
    assert entry["runs"]["ivon"]["sampled"]["samples"] == 2
    generative = _eval(tmp_path, "generative", run_dir, "--task", "wordqa", "--limit", "2")
    assert generative["plan"]["samples"] == 2 and generative["runs"]["ivon"]["samples"] == 2
    assert generative["tasks"]["wordqa"]["runs"]["ivon"]["samples"] == 2
    for args in ([], ["--task", "wordqa"]):
        report = _eval(tmp_path, f"override{len(args)}", run_dir, *args, "--limit", "2", "--samples", "1")
        assert report["plan"]["samples"] == 1 and report["plan"]["samples_source"] == "command line (--samples)"
        assert report["runs"]["ivon"]["samples"] == 1


def test_s_of_an_sft_run_is_its_own_unless_given(tmp_path):
    demo_sft = os.path.join(ROOT, "recipes", "demo-sft.yaml")
    run = tmp_path / "sft"
    assert cli.main(["train", demo_sft, f"output_dir={run}", "max_steps=2", "max_train_samples=16",
                     "max_eval_samples=4", "final_eval_samples=3", "disable_tqdm=true"]) == 0  # fmt: skip
    own = _eval(tmp_path, "own", str(run), "--limit", "4")  # the 4 rows train scored (max_eval_samples)
    assert own["plan"]["samples"] == 3 and own["protocol"]["samples"] == 3
    assert own["runs"]["ivon"]["metrics"]["sampled"]["samples"] == 3
    with open(run / "metrics.json") as f:
        trained = json.load(f)
    assert trained["protocol"] == own["protocol"]  # one description of how the number was made
    _assert_equal_to_1e9(own["runs"]["ivon"]["metrics"], trained["metrics"])
    given = _eval(tmp_path, "given", str(run), "--samples", "1")
    assert given["runs"]["ivon"]["metrics"]["sampled"]["samples"] == 1


def _study_calibration():
    spec = importlib.util.spec_from_file_location("study_calibration", os.path.join(ROOT, "scripts",
                                                                                    "study_calibration.py"))  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_eval_and_the_calibration_study_give_the_same_numbers(run_dir, tmp_path):
    """One path: metrics.json (train's final evaluation), eval.json (`ivon-lora eval` on the same split) and the
    study's rows (scored through the plan, not train's predictions file) are equal to 1e-9."""
    with open(os.path.join(run_dir, "metrics.json")) as f:
        trained = json.load(f)
    plan = trained["plan"]
    report = _eval(tmp_path, "eval", run_dir, "--limit", str(plan["limit"]), "--batch-size", str(plan["batch_size"]))
    (entry,) = report["tasks"].values()
    evaluated = entry["runs"]["ivon"]
    _assert_equal_to_1e9(evaluated, trained["metrics"])
    assert report["plan"]["samples"] == plan["samples"] and report["plan"]["seed"] == plan["seed"]

    study = _study_calibration()
    scored = study.score_with_eval(
        run_dir, "validation", plan["samples"], limit=plan["limit"], batch_size=plan["batch_size"]
    )
    assert scored.ids == [row["id"] for row in map(json.loads, open(os.path.join(run_dir, "predictions.jsonl")))]
    for predictive, probs in (("mean", scored.mean), ("sampled", scored.predictive())):
        row = study.metrics_of(probs, scored.gold)
        for metric in ("accuracy", "nll", "brier", "ece_10", "ece_15"):
            assert row[metric] == pytest.approx(evaluated[predictive][metric], abs=1e-9, rel=0), (predictive, metric)
