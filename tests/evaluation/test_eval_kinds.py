"""`ivon_lora.evaluation.kinds`: the kinds of evaluation (multiple choice, generative, SFT, lm-eval), each a
registered `EvalKind` strategy that declares the options it reads, driven by the one path of `evaluation.run`."""

import dataclasses
import json
import types

import pytest
import torch

from ivon_lora import cli
from ivon_lora.evaluation.kinds import EVAL_KINDS, EvalKind, register_kind, select_kind
from ivon_lora.evaluation.kinds.base import COMMON_OPTIONS, flag
from ivon_lora.config import EvalConfig
from ivon_lora.errors import UsageError

# A value that differs from the default, for every EvalConfig field a kind may refuse.
NON_DEFAULT = {
    "task": ["synthetic"], "split": "test", "file": "rows.jsonl", "protocol": "blob", "ece_bins": [7],
    "samples_per_pass": 2, "mc_dropout_samples": 3, "decoding": "averaged", "sampling_temperature": 0.5,
    "prune_fractions": [0.5], "temperatures": [2.0], "sweep": True, "prune_scope": "matrix",
    "prune_mode": "denoise", "prune_criterion": "magnitude", "select_split": "validation", "select_file": "s.jsonl",
    "select_by": "brier", "ensemble": ["a", "b"], "temperature_scaling": True, "lm_eval_tasks": ["arc_easy"],
    "lm_eval_include_path": "yamls", "risk_averse": True,
}  # fmt: skip


# The options that select each kind (multiple choice and SFT: none; the recipe decides between them).
SELECTING = {
    "multiple_choice": {},
    "sft": {},
    "generative": {"task": ["wordqa"]},
    "lm_eval": {"lm_eval_tasks": ["arc_easy"]},
}


def _options(**values) -> EvalConfig:
    return EvalConfig(run_dir="run", **values)


def test_every_eval_option_is_read_by_some_kind_and_non_default_values_are_known():
    fields = {field.name for field in dataclasses.fields(EvalConfig)}
    declared = set(COMMON_OPTIONS).union(*(kind.accepts for kind in EVAL_KINDS.values()))
    assert declared == fields  # an option no kind reads would be accepted nowhere and refused everywhere
    assert set(NON_DEFAULT) == fields - COMMON_OPTIONS
    assert set(EVAL_KINDS) == {"multiple_choice", "generative", "sft", "lm_eval"}


@pytest.mark.parametrize("name", ["multiple_choice", "generative", "sft", "lm_eval"])
def test_each_kind_refuses_every_option_it_does_not_declare_naming_the_kinds_that_read_it(name):
    kind = EVAL_KINDS[name]
    base = SELECTING[name]
    kind.check_options(_options(**base))  # its own selecting options pass
    for option, value in NON_DEFAULT.items():
        options = _options(**{**base, option: value})
        if option in kind.accepts:
            if option not in ("prune_fractions", "temperatures", "sweep") or kind.sweeps:
                kind.check_options(options)
            continue
        with pytest.raises(UsageError) as error:
            kind.check_options(options)
        message = str(error.value)
        assert message.startswith(flag(option)), message
        readers = [other.description for other in EVAL_KINDS.values() if option in other.accepts]
        if name != "lm_eval":  # lm-eval's own wording: "--x does not apply to --lm-eval-tasks (why)"
            assert all(reader in message for reader in readers), message


def test_kinds_without_sweeps_take_one_fraction_and_one_temperature():
    for name in ("generative", "sft", "lm_eval"):
        base = SELECTING[name]
        with pytest.raises(UsageError, match="sweeps are for multiple-choice tasks"):
            EVAL_KINDS[name].check_options(_options(**base, prune_fractions=[0.0, 0.5]))


def test_exactly_one_kind_applies_to_any_options():
    sft = types.SimpleNamespace(objective="sft")
    choice = types.SimpleNamespace(objective="choice")
    assert select_kind(_options(lm_eval_tasks=["arc_easy"]), sft).name == "lm_eval"
    assert select_kind(_options(task=["wordqa"]), choice).name == "generative"
    assert select_kind(_options(task=["wordqa"]), sft).name == "generative"
    assert select_kind(_options(task=["synthetic"]), sft).name == "multiple_choice"
    assert select_kind(_options(), sft).name == "sft"
    assert select_kind(_options(), choice).name == "multiple_choice"
    assert select_kind(_options(), None).name == "multiple_choice"
    with pytest.raises(ValueError, match="already registered"):
        register_kind(type("Again", (EvalKind,), {"name": "sft"}))


def test_a_fifth_kind_is_one_registered_class_and_gets_the_shared_driver(run_dir, tmp_path, capsys, monkeypatch):
    """The plan (S and its source), out dir checks, loading, freeing, protocol + environment and the staged write
    come from the one path; the kind only says what it scores."""

    class CountKind(EvalKind):
        name = "count"
        description = "counting"
        accepts = frozenset({"task"})

        @classmethod
        def applies(cls, options, recipe):
            return options.task == ["count"]

        @classmethod
        def resolve(cls, options, described):
            return {"tasks": ("count",), "splits": (), "out_name": "count"}

        @classmethod
        def load(cls, plan, described):
            return None

        @classmethod
        def score(cls, plan, data, described, run):
            return sum(p.numel() for n, p in run.model.named_parameters() if "lora_" in n)

        @classmethod
        def report(cls, plan, data, scores):
            return {"counts": scores}

        @classmethod
        def protocol(cls, plan, data):
            return {"kind": "count", "samples": plan.samples}

        @classmethod
        def tables(cls, plan, data, result):
            text = "".join(f"{label}: {count}\n" for label, count in result["counts"].items())
            return text, text

    # The registry with this kind alone (the path reads it where the package and its base module hold it).
    import ivon_lora.evaluation.kinds as kinds_package
    import ivon_lora.evaluation.run as evaluation_run
    from ivon_lora.evaluation.kinds import base as kinds_base
    from ivon_lora.registry import Registry

    alone = Registry("eval kind")
    for module in (kinds_package, kinds_base, evaluation_run):
        monkeypatch.setattr(module, "EVAL_KINDS", alone)
    register_kind(CountKind)
    assert list(alone) == ["count"]
    out = tmp_path / "count"
    assert cli.main(["eval", run_dir, "--task", "count", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["counts"]["ivon"] > 0 and report["protocol"] == {"kind": "count", "samples": 2}
    assert (
        report["plan"]["kind"] == "count"
        and report["plan"]["samples_source"] == "the run's recipe (final_eval_samples)"
    )
    assert "torch" in report["environment"]
    assert (out / "eval.md").read_text() == f"ivon: {report['counts']['ivon']}\n"
    assert cli.main(["eval", run_dir, "--task", "count", "--out", str(out)]) == 2  # the path's --out check
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main(["eval", run_dir, "--task", "count", "--seed", "3", "--samples", "2", "--decoding", "averaged",
                     "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "--decoding is for no kind, not counting" in capsys.readouterr().err


def test_samples_per_pass_equal_sequential_samples(run_dir, tmp_path):
    """--samples-per-pass K scores the same posterior draws K per forward pass (3 samples in passes of 2 and 1)."""
    common = ["eval", run_dir, "--samples", "3", "--limit", "20", "--seed", "4", "--batch-size", "8"]
    assert cli.main([*common, "--out", str(tmp_path / "sequential")]) == 0
    assert cli.main([*common, "--samples-per-pass", "2", "--out", str(tmp_path / "batched")]) == 0
    rows = {}
    for name in ("sequential", "batched"):
        report = json.loads((tmp_path / name / "eval.json").read_text())
        (entry,) = report["tasks"].values()
        lines = (tmp_path / name / entry["files"]["predictions_ivon"]).read_text().splitlines()
        rows[name] = [json.loads(line) for line in lines]
    assert "samples_per_pass" in report["protocol"]
    assert len(rows["batched"]) == 20 and [r["id"] for r in rows["batched"]] == [r["id"] for r in rows["sequential"]]
    for batched, sequential in zip(rows["batched"], rows["sequential"]):
        assert batched["mean"] == sequential["mean"]
        assert torch.allclose(
            torch.tensor(batched["sample_probs"]), torch.tensor(sequential["sample_probs"]), atol=1e-6, rtol=0
        )
    different = [r["sample_probs"][0] != r["sample_probs"][1] for r in rows["batched"]]
    assert any(different)  # real samples, not the mean three times
