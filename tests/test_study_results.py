"""The studies' tables are what their scripts render from the committed results, and the docs show those tables.

The studies themselves are scripts (hours on 2 cores), not tests; what is checked here is the chain a reader
follows: a study page of the docs -> its `<!-- study: NAME -->` marker, which the docs build replaces with study.md
(docs/hooks.py) -> study.md, equal to what the study's script renders from study.json; and the training-length
study's merge of regimes run in different invocations (nothing lost, nothing mixed). The numbers quoted in prose are
checked in tests/test_docs.py.
"""

import argparse
import functools
import glob
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


def _study_pages(marker):
    """The docs pages holding `<!-- study: NAME -->` (or `<!-- study-source: NAME -->`), by NAME."""
    pages = {}
    for page in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True):
        for name in re.findall(rf"^<!-- {marker}: ([\w./-]+) -->$", _read(page), re.M):
            pages.setdefault(name, []).append(os.path.relpath(page, ROOT))
    return pages


def test_every_study_has_a_page_showing_its_committed_results():
    shown = {**_study_pages("study"), **_study_pages("study-source")}
    studies = {os.path.relpath(os.path.dirname(path), os.path.join(ROOT, "results"))
               for kind in ("study", "compare")
               for path in glob.glob(os.path.join(ROOT, "results", "**", f"{kind}.json"), recursive=True)}  # fmt: skip
    assert studies and studies <= set(shown), f"no docs page shows {sorted(studies - set(shown))}"
    assert set(COMPARISONS) <= studies


@pytest.mark.parametrize("study", CALIBRATION_STUDIES)
def test_calibration_tables_are_the_committed_study_and_on_its_page(study):
    calibration = _script("study_calibration")
    result = json.loads(_read("results", study, "study.json"))
    table = _read("results", study, "study.md")
    assert table == calibration.markdown(result["table"])
    # The table is the mean and std of the per-seed rows the JSON also holds.
    assert json.loads(json.dumps(calibration.summarise(result))) == result["table"]
    assert study in _study_pages("study")


def test_the_other_studies_tables_are_what_their_scripts_render_from_study_json():
    merge = json.loads(_read("results", "merge-smollm2", "study.json"))
    expected = f"Command: `flock /tmp/ivon-study.lock {merge['command']}`\n{_script('study_merge').table(merge)}\n"
    assert _read("results", "merge-smollm2", "study.md") == expected

    continual = json.loads(_read("results", "continual-smollm2", "study.json"))
    options = argparse.Namespace(**continual["settings"])
    expected = _script("study_continual").markdown(continual["summary"], options, options.seeds)
    assert _read("results", "continual-smollm2", "study.md") == expected

    selective = json.loads(_read("results", "sft-wordqa-smollm2", "study", "study.json"))
    expected = _script("study_selective_generation").markdown(selective["summary"], selective["seeds"])
    assert _read("results", "sft-wordqa-smollm2", "study", "study.md") == expected

    report = _script("study_sensitivity_report")
    sensitivity = json.loads(_read("results", "sensitivity-smollm2", "study.json"))
    assert _read("results", "sensitivity-smollm2", "study.md").endswith(report.tables(sensitivity["parts"]))
    for study in ("continual-smollm2", "sft-wordqa-smollm2/study"):
        assert study in _study_pages("study")

    curvature = json.loads(_read("results", "curvature", "study.json"))
    assert _read("results", "curvature", "study.md") == _script("study_curvature").markdown(curvature)
    assert "curvature" in _study_pages("study")
    # Issue 33's bar, on the quickstart's run: refine with its scale chosen on validation (inside its grid) gives a
    # precision that ranks like an independent Fisher (median rho >= 0.5) with under half the entries at the prior.
    (chosen,) = [row for row in curvature["parts"]["quickstart"]["rows"] if row["selection"]]
    grid, candidates = _script("study_curvature").REFINE_GRID, chosen["selection"]["candidates"]
    assert [(c["ess"], c["prior_precision"]) for c in candidates] == [(e, d) for e in grid["ess"]
                                                                     for d in grid["prior_precision"]]  # fmt: skip
    pick = candidates[chosen["selection"]["chosen"]]
    assert pick["sampled"]["nll"] == min(c["sampled"]["nll"] for c in candidates)
    for axis, key in (("ess", "ess"), ("prior_precision", "prior_precision")):
        assert grid[axis][0] < pick[key] < grid[axis][-1], f"refine's {axis} chosen at the grid's edge"
    assert (chosen["ess"], chosen["prior_precision"]) == (pick["ess"], pick["prior_precision"])
    assert chosen["vs_sampled_fisher"]["spearman_median"] >= 0.5 and chosen["floor_share"] < 0.5
    for part in ("tiny", "smollm2", "quickstart"):  # each part records what made it
        assert curvature["parts"][part]["command"].startswith("python scripts/study_curvature.py")
        assert curvature["parts"][part]["environment"]["cpu"]["capability"]


def test_training_length_table_is_the_committed_study_and_on_its_page():
    training_length = _script("study_training_length")
    path = os.path.join(ROOT, "results", "training-length-smollm2", "study.json")
    result = json.loads(_read(path))
    table = _read("results", "training-length-smollm2", "study.md")
    assert table == training_length.final_table(result["curves"])
    assert "training-length-smollm2" in _study_pages("study")
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


def test_the_merge_studys_random_search_gives_every_method_the_same_candidates():
    """Issue 33's merging protocol (`study_merge.py --search random`): the same number of validation candidates per
    method, unequal weights for every method (the same draws for all), each method's own setting in its range, the
    same draws on a rerun, and no method's draws moved by another's."""
    merge = _script("study_merge")
    rows = merge.random_search("ivon", seed=1)
    by_method = {}
    for name, spec, (weights,) in rows:
        by_method.setdefault(name, []).append((spec, weights))
    assert by_method.pop("average") == [({"method": "cat"}, (0.5, 0.5))]  # the one fixed reference
    assert set(by_method) == {*merge.SEARCH, *merge.IVON_SEARCH}
    assert {len(candidates) for candidates in by_method.values()} == {merge.CANDIDATES}
    weights = [w for _, w in by_method["task arithmetic"]]
    assert all([w for _, w in candidates] == weights for candidates in by_method.values())
    assert sum(a != b for a, b in weights) == len(weights)  # unequal weights
    low, high = merge.WEIGHT_RANGE
    assert all(low <= a <= high for pair in weights for a in pair)
    for name, (spec, setting) in {**merge.SEARCH, **merge.IVON_SEARCH}.items():
        if setting is not None:
            key, low, high, _ = setting
            values = [drawn[key] for drawn, _ in by_method[name]]
            assert all(low <= v <= high for v in values) and len(set(values)) == merge.CANDIDATES
    assert merge.random_search("ivon", seed=1) == rows and merge.random_search("ivon", seed=2) != rows
    adamw = merge.random_search("adamw", seed=1)  # fewer methods: the shared ones draw the same
    assert [row for row in rows if row[0] in merge.SEARCH or row[0] == "average"] == adamw


def test_the_sensitivity_studys_auroc_and_noisy_validation_nll_are_their_plain_forms():
    """Part (e)'s AUROC (the rank-sum form, scored a block of bootstrap replicates at once) equals scikit-learn's,
    ties included; and the validation NLL under label noise ρ is (1 - ρ)·NLL(label) + ρ·NLL(other answer)."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    study = _script("study_sensitivity")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, size=(3, 50)).astype(float)  # integers: many ties
    flipped = rng.random((3, 50)) < 0.3
    block = np.stack([scores, flipped.astype(float)], axis=-1)
    expected = [roc_auc_score(f, s) for s, f in zip(scores, flipped)]
    assert np.allclose(study._auroc(block), expected) and np.isclose(study._auroc(block[0]), expected[0])

    probs = torch.tensor([[0.9, 0.1], [0.25, 0.75]])
    gold = torch.tensor([0, 0])
    noisy = study._noisy_validation_nll(probs, gold)
    assert torch.allclose(noisy, torch.tensor([-(0.85 * np.log(0.9) + 0.15 * np.log(0.1)),
                                               -(0.85 * np.log(0.25) + 0.15 * np.log(0.75))], dtype=torch.float64))  # fmt: skip


# The comparisons `ivon-lora compare` made for the README and the study pages (issue 34): results/NAME/compare.json.
COMPARISONS = ("compare-wordfacts_clean-smollm2",)


@pytest.mark.parametrize("name", COMPARISONS)
def test_a_comparisons_table_is_what_compare_renders_from_its_json_and_on_its_page(name):
    from ivon_lora.comparison.report import markdown

    report = json.loads(_read("results", name, "compare.json"))
    assert _read("results", name, "compare.md") == markdown(report)
    assert name in _study_pages("study")


@pytest.mark.parametrize("name", COMPARISONS)
def test_a_published_comparison_follows_the_protocol(name):
    """What the README's comparisons promise, read from what they ran: 5 reported seeds apart from the selection
    seed, at least 1,000 test questions, the same budget and number of candidates per method, no choice at the edge
    of its grid, every baseline, and every run's resolved recipe and environment."""
    report = json.loads(_read("results", name, "compare.json"))
    seeds = report["seeds"]
    assert len(seeds["reported"]) == 5 and seeds["selection"] and not set(seeds["selection"]) & set(seeds["reported"])
    assert report["num_examples"] >= 1000 and report["splits"]["reported"] == "test"
    methods = report["methods"].values()
    assert len({len(method["candidates"]) for method in methods}) == 1
    assert len({json.dumps(method["budget"], sort_keys=True) for method in methods}) == 1
    for method in methods:
        assert 0 < method["chosen"] < len(method["candidates"]) - 1, f"{method['recipe']}: chosen at a grid edge"
    assert set(report["baselines"]) == {"temperature", "early_stopping", "ensemble", "mc_dropout"}
    for run in report["runs"].values():
        assert run["recipe"]["seed"] == run["seed"] and run["environment"]["cpu"]["capability"]
