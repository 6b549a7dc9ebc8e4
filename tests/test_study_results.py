"""The README's result tables quote the committed results, and the study scripts' bookkeeping keeps them.

The studies themselves are scripts (hours on 2 cores), not tests; what is checked here is the chain a reader
follows: README row -> study.md -> study.json, and the training-length study's merge of regimes run in
different invocations (nothing lost, nothing mixed).
"""

import functools
import importlib.util
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIBRATION_STUDIES = ("wordfacts_clean-smollm2", "wordfacts-smollm2", "wordpick-smollm2")


@functools.cache
def _script(name):
    """A study script as a module, loaded once (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _rows(markdown):
    return [line for line in markdown.splitlines()[2:] if line.startswith("|")]


def _numbers(row):
    return re.findall(r"\d+\.\d+", row)


@pytest.mark.parametrize("study", CALIBRATION_STUDIES)
def test_calibration_tables_in_the_readme_are_the_committed_study(study):
    calibration = _script("study_calibration")
    result = json.loads(_read("results", study, "study.json"))
    table = _read("results", study, "study.md")
    assert table == calibration.markdown(result["table"])
    # The table is the mean and std of the per-seed rows the JSON also holds.
    assert json.loads(json.dumps(calibration.summarise(result))) == result["table"]
    readme = _read("README.md")
    for row in _rows(table):
        assert _numbers(row) and row in readme, f"{study}: README lacks {row}"


def test_training_length_table_in_the_readme_is_the_committed_study():
    training_length = _script("study_training_length")
    path = os.path.join(ROOT, "results", "training-length-smollm2", "study.json")
    result = json.loads(_read(path))
    table = _read("results", "training-length-smollm2", "study.md")
    assert table == training_length.final_table(result["curves"])
    section = _read("README.md").split("### Calibration over training length", 1)[1].split("\n## ", 1)[0]
    readme_rows = [row for row in _rows(section.split("| train labels |", 1)[1]) if _numbers(row)]
    assert [_numbers(row) for row in readme_rows] == [_numbers(row) for row in _rows(table)]
    # And the curves are what the per-checkpoint numbers aggregate to.
    kept = training_length.earlier_regimes(path, result, [])
    per_seed = {regime: numbers["checkpoints"] for regime, numbers in kept.items()}
    assert json.loads(json.dumps(training_length.aggregate(per_seed, result["steps_per_epoch"]))) == result["curves"]


def _setup(training_length, **changes):
    setup = {**{key: None for key in training_length.SETUP}, "task": "wordfacts", "steps": 640, "seeds": [0, 1]}
    return {**setup, **changes}


def _study(setup, regimes):
    checkpoint = {"validation": {"mean": {"nll": 0.5}}, "test": {"mean": {"accuracy": 0.9}}}
    return {
        "command": "python scripts/study_training_length.py --noise 0",
        "environment": {"torch": "2.13.0"},
        **setup,
        "selection": {"regimes": {regime: {"adamw": {"chosen": 0}} for regime in regimes}},
        "resolved_recipes": {regime: {"adamw": {"0": {"seed": 0}}} for regime in regimes},
        "checkpoints": {regime: {"adamw": {"0": {"128": checkpoint}, "1": {"128": checkpoint}}} for regime in regimes},
    }


def test_earlier_regimes_keeps_what_this_invocation_does_not_rerun(tmp_path):
    training_length = _script("study_training_length")
    setup = _setup(training_length)
    path = str(tmp_path / "study.json")
    assert training_length.earlier_regimes(path, setup, ["clean"]) == {}  # no earlier study
    with open(path, "w") as f:
        json.dump(_study(setup, ["clean", "noise0.15"]), f)

    kept = training_length.earlier_regimes(path, setup, ["noise0.15"])
    assert list(kept) == ["clean"]
    # JSON's string keys come back as the ints the study writes, so a merged study aggregates like a fresh one.
    assert list(kept["clean"]["checkpoints"]["adamw"]) == [0, 1]
    assert list(kept["clean"]["checkpoints"]["adamw"][0]) == [128]
    assert kept["clean"]["selection"] == {"adamw": {"chosen": 0}}
    # A study written before provenance was recorded: its own command and versions.
    assert kept["clean"]["provenance"] == {"command": "python scripts/study_training_length.py --noise 0",
                                           "environment": {"torch": "2.13.0"}}  # fmt: skip
    assert training_length.earlier_regimes(path, setup, ["clean", "noise0.15"]) == {}  # everything rerun


@pytest.mark.parametrize("key, value", [("steps", 320), ("seeds", [0, 1, 2]), ("task", "wordpick")])
def test_earlier_regimes_of_another_setup_are_refused_naming_the_key(tmp_path, key, value):
    training_length = _script("study_training_length")
    path = str(tmp_path / "study.json")
    with open(path, "w") as f:
        json.dump(_study(_setup(training_length), ["clean"]), f)
    with pytest.raises(SystemExit, match=f"its {key} is .*cannot be kept"):
        training_length.earlier_regimes(path, _setup(training_length, **{key: value}), ["noise0.15"])
    # Rerunning the same regime under the new setup is allowed: nothing earlier is kept.
    assert training_length.earlier_regimes(path, _setup(training_length, **{key: value}), ["clean"]) == {}


def test_regimes_are_named_as_a_reader_says_them():
    training_length = _script("study_training_length")
    assert training_length.describe("clean") == "clean"
    assert training_length.describe("noise0.15") == "15% flipped"
