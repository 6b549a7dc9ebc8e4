"""Recipes and the CLI: clear errors before any model loads, and the demo end to end."""

import json
import os
import re

import pytest
import yaml
from peft import PeftModel

from ivon_lora import cli, modeling
from ivon_lora.posterior import Posterior
from ivon_lora.config import RecipeError, load_recipe, parse_overrides, read_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "recipes", "demo.yaml")


def _refuse_model_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe error")

    monkeypatch.setattr(modeling, "load_base_model", fail)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["learning_rat=0.1"],
            r"Unknown recipe key\(s\) on the command line: 'learning_rat' \(did you mean 'learning_rate'\?\)",
        ),
        (["max_steps=ten"], r"Recipe key 'max_steps' on the command line: 'ten' is not a valid int"),
        (["lora_rank=2.5"], r"Recipe key 'lora_rank'.*2.5 is not a valid int"),
        (
            ["train_file=/nonexistent/train.jsonl"],
            r"Recipe key 'train_file': file '/nonexistent/train.jsonl' does not exist",
        ),
        (["fp16=true"], r"fp16=True cannot be used with optim='ivon'"),
        (["oops"], r"Override 'oops' is not of the form key=value"),
        (["dtype=bf16"], r"Invalid dtype value: 'bf16' \(must be one of auto, float32, bfloat16, float16\)"),
    ],
)
def test_recipe_errors_name_the_key_before_any_model_loads(overrides, message, tmp_path, monkeypatch, capsys):
    _refuse_model_loading(monkeypatch)
    assert cli.main(["train", DEMO, f"output_dir={tmp_path / 'run'}", *overrides]) == 2
    assert not (tmp_path / "run").exists()
    with pytest.raises(RecipeError, match=message):
        load_recipe(DEMO, [f"output_dir={tmp_path / 'run'}", *overrides])


def test_a_non_empty_output_dir_is_not_overwritten_unasked(tmp_path, monkeypatch):
    _refuse_model_loading(monkeypatch)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RecipeError, match="exists and is not empty.*overwrite_output_dir=true"):
        load_recipe(DEMO, [f"output_dir={tmp_path}"])
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_yaml_float_spellings_and_single_item_lists_are_accepted(tmp_path):
    recipe = load_recipe(DEMO, [f"output_dir={tmp_path}", "learning_rate=3e-2", "lora_target=all-linear"])
    assert recipe.training.learning_rate == 0.03
    assert recipe.model.lora_target == ["all-linear"]


def test_missing_recipe_file_and_required_keys(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "none.yaml"))
    (tmp_path / "r.yaml").write_text("output_dir: x\n")
    with pytest.raises(RecipeError, match="has no model_name_or_path"):
        load_recipe(str(tmp_path / "r.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["ivon", "adamw_torch"])
def test_train_writes_adapter_posterior_metrics_and_recipe(optim, tmp_path, llama_tokenizer):
    out = tmp_path / optim
    args = ["train", DEMO, f"output_dir={out}", f"optim={optim}", "max_steps=4", "final_eval_samples=3",
            "max_train_samples=64", "max_eval_samples=32", "disable_tqdm=true"]  # fmt: skip
    if optim != "ivon":
        args.append("learning_rate=1e-3")
    assert cli.main(args) == 0

    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.json", "recipe.yaml"} <= files
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["num_examples"] == 32
    assert report["protocol"]["ece_bins"] == [10, 15]
    assert {"torch", "transformers", "peft"} <= set(report["environment"])
    assert (out / "recipe.yaml").read_text().startswith("# Resolved recipe of this run (ivon-lora 0.1.0, torch ")
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["max_steps"] == 4 and resolved["optim"] == optim
    base = modeling.build_tiny_model(modeling.BUILTIN_MODELS["builtin:tiny-llama"], llama_tokenizer, seed=42)
    model = PeftModel.from_pretrained(base, str(out))
    if optim == "ivon":
        assert {"posterior.safetensors", "posterior_config.json"} <= files
        assert [m["samples"] for m in report["metrics"]["by_num_samples"]] == [1, 2, 3]
        assert report["metrics"]["sampled"]["samples"] == 3
        Posterior.load(str(out)).bind(model)
    else:
        assert "posterior.safetensors" not in files and "sampled" not in report["metrics"]
    # The resolved recipe reproduces the run's configuration.
    assert load_recipe(str(out / "recipe.yaml"), [f"output_dir={tmp_path / 'again'}"]).training.optim == optim


@pytest.mark.slow
def test_demo_recipe_learns_the_task(tmp_path):
    """The Quickstart demo itself: well above chance (25%) on the held-out split after the full recipe."""
    out = tmp_path / "demo"
    assert cli.main(["train", DEMO, f"output_dir={out}", "disable_tqdm=true"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["mean"]["accuracy"] > 0.6
    assert metrics["sampled"]["accuracy"] > 0.6


def test_unknown_dataset_and_split_are_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="Recipe key 'dataset': Unknown task 'arc_eazy'. Did you mean 'arc_easy'"):
        load_recipe(DEMO, [f"output_dir={tmp_path}", "dataset=arc_eazy"])
    with pytest.raises(RecipeError, match="Recipe key 'eval_split': task 'synthetic' has no split 'dev'"):
        load_recipe(DEMO, [f"output_dir={tmp_path}", "eval_split=dev"])


def test_a_bad_record_fails_before_the_model_loads_and_leaves_no_output_dir(tmp_path, monkeypatch, capsys):
    _refuse_model_loading(monkeypatch)
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "Why?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}))
    out = tmp_path / "run"
    assert cli.main(["train", DEMO, f"output_dir={out}", f"train_file={bad}"]) == 2
    error = capsys.readouterr().err
    assert "Task 'synthetic', split 'train'" in error and "row 0: the record has no label" in error
    assert not out.exists()


def test_help_keys_lists_the_ivon_and_recipe_keys(capsys):
    assert cli.main(["train", "--help-keys"]) == 0
    listing = capsys.readouterr().out
    assert "ivon_ess (float | None)" in listing and "lora_target" in listing and "final_eval_samples" in listing


def test_prune_export_and_eval_read_a_yaml_config_then_key_values_then_flags(run_dir, tmp_path, capsys):
    config = tmp_path / "prune.yaml"
    config.write_text(f"run_dir: {run_dir}\nfraction: 0.5\nscope: matrix\nout: {tmp_path / 'p'}\n")
    assert cli.main(["prune", str(config), "mode=denoise"]) == 0
    pruning = json.loads((tmp_path / "p" / "posterior_config.json").read_text())["pruning"][-1]
    assert (pruning["fraction"], pruning["scope"], pruning["mode"]) == (0.5, "matrix", "denoise")
    assert cli.main(["prune", str(config), "--fraction", "0.25", "--out", str(tmp_path / "q")]) == 0
    assert json.loads((tmp_path / "q" / "posterior_config.json").read_text())["pruning"][-1]["fraction"] == 0.25

    (tmp_path / "bad.yaml").write_text(f"run_dir: {run_dir}\nfractoin: 0.5\nout: {tmp_path / 'r'}\n")
    assert cli.main(["prune", str(tmp_path / "bad.yaml")]) == 2
    assert "Unknown config key(s) in " in (error := capsys.readouterr().err) and "(did you mean 'fraction'?)" in error
    assert cli.main(["prune", run_dir, "fraction=1e-1", "scope=rows", f"out={tmp_path / 'r'}"]) == 2
    assert "Invalid scope value: 'rows' (must be one of global, matrix)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

    (tmp_path / "eval.yaml").write_text(f"run_dir: {run_dir}\nsplit: test\nlimit: 8\nsamples: 1\n")
    assert cli.main(["eval", str(tmp_path / "eval.yaml"), f"out={tmp_path / 'e'}", "--seed", "3"]) == 0
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["tasks"]["synthetic"]["num_examples"] == 8 and report["protocol"]["samples"] == 1

    (tmp_path / "export.yaml").write_text(f"run_dir: {tmp_path / 'p'}\n")
    assert cli.main(["export", str(tmp_path / "export.yaml"), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "README.md").is_file() and (
        tmp_path / "x" / "posterior" / "posterior.safetensors"
    ).is_file()


@pytest.mark.parametrize(
    "old, new, read",
    [
        ("eval_mc_samples", "final_eval_samples", lambda recipe: recipe.run.final_eval_samples),
        ("train_mc_samples", "ivon_mc_samples", lambda recipe: recipe.training.ivon_mc_samples),
        ("ivon_eval_mc_samples", "ivon_eval_samples", lambda recipe: recipe.training.ivon_eval_samples),
    ],
)
def test_a_former_recipe_key_works_with_a_warning_naming_the_new_one(old, new, read, tmp_path):
    with pytest.warns(FutureWarning, match=f"'{old}'.*deprecated: rename it '{new}'"):
        recipe = load_recipe(DEMO, [f"output_dir={tmp_path / 'run'}", f"{old}=3"])
    assert read(recipe) == 3 and old not in recipe.resolved() and recipe.resolved()[new] == 3
    with pytest.raises(RecipeError, match=f"'{old}' and '{new}' on the command line.*former name.*keep only '{new}'"):
        load_recipe(DEMO, [f"output_dir={tmp_path / 'run'}", f"{old}=3", f"{new}=4"])
    # A saved run's recipe written under the former name reads as the new one.
    saved = tmp_path / "saved.yaml"
    demo = {key: value for key, value in yaml.safe_load(open(DEMO)).items() if key != new}
    saved.write_text(yaml.safe_dump({**demo, "output_dir": str(tmp_path / "run"), old: 2}))
    with pytest.warns(FutureWarning, match=f"'{old}' in {saved} is deprecated"):
        assert read(load_recipe(str(saved), for_training=False)) == 2


def test_the_training_arguments_take_their_former_field_names_with_a_warning_and_refuse_both():
    import dataclasses

    from ivon_lora.config.recipe import RENAMED_TRAINING_KEYS
    from ivon_lora.trainer import IVONTrainingArguments
    from ivon_lora.trainer.config import RENAMED_TRAINING_FIELDS

    assert RENAMED_TRAINING_KEYS == RENAMED_TRAINING_FIELDS  # the recipe renames what the arguments rename
    with pytest.warns(FutureWarning, match="train_mc_samples is deprecated: rename it ivon_mc_samples"):
        args = IVONTrainingArguments(output_dir="o", train_mc_samples=3, report_to=[])
    assert (args.ivon_mc_samples, args.train_mc_samples) == (3, None)
    assert dataclasses.replace(args, ivon_mc_samples=2).ivon_mc_samples == 2  # moved once: no warning, no clash
    with pytest.warns(FutureWarning, match="ivon_eval_mc_samples is deprecated: rename it ivon_eval_samples"):
        assert IVONTrainingArguments(output_dir="o", ivon_eval_mc_samples=4, report_to=[]).ivon_eval_samples == 4
    with pytest.raises(ValueError, match="train_mc_samples and ivon_mc_samples given: .*keep only ivon_mc_samples"):
        IVONTrainingArguments(output_dir="o", train_mc_samples=3, ivon_mc_samples=2, report_to=[])


def test_an_adamw_recipe_without_learning_rate_gets_transformers_default(tmp_path):
    recipe = load_recipe(DEMO, [f"output_dir={tmp_path}", "optim=adamw_torch", "learning_rate=null"])
    assert recipe.training.learning_rate == 5e-5 and recipe.resolved()["learning_rate"] == 5e-5
    assert load_recipe(DEMO, [f"output_dir={tmp_path}", "learning_rate=null"]).training.learning_rate == 0.03


def test_ivon_keys_of_the_recipe_file_under_another_optimizer_are_a_warning_naming_them(tmp_path, caplog):
    """One recipe serves an IVON run and its AdamW baseline (`optim=adamw_torch` on the command line): the file's
    ivon_* keys are then unused, and said so; typed on the command line they are an error (tests/test_user_errors.py)."""
    import logging

    with caplog.at_level(logging.WARNING, logger="ivon_lora.config"):
        recipe = load_recipe(DEMO, [f"output_dir={tmp_path / 'run'}", "optim=adamw_torch"])
    assert not recipe.training.use_ivon
    assert "ivon_clip_radius, ivon_ess, ivon_hess_init" in caplog.text and "demo.yaml" in caplog.text


def test_yes_no_on_off_are_text_as_in_yaml_1_2_and_only_true_false_are_booleans(tmp_path):
    """PyYAML reads YAML 1.1, where `save_strategy: no` (a TrainingArguments value) is the boolean False."""
    assert parse_overrides(["a=no", "b=On", "c=true", "d=False", "e=1"]) == {"a": "no", "b": "On", "c": True,
                                                                            "d": False, "e": 1}  # fmt: skip
    recipe = tmp_path / "r.yaml"
    recipe.write_text("save_strategy: no\neval_strategy: steps\nremove_unused_columns: false\n")
    assert read_yaml(str(recipe)) == {"save_strategy": "no", "eval_strategy": "steps", "remove_unused_columns": False}
    loaded = load_recipe(DEMO, [f"output_dir={tmp_path / 'run'}", "save_strategy=no"])
    assert loaded.training.save_strategy == "no"


def test_the_bounds_are_written_once_in_the_field_metadata_and_checked_from_there(tmp_path):
    """A value out of a field's bounds or choices is refused from its metadata (`check_fields`), with the one message
    form; the same metadata is what --help-keys and the reference pages state. No config repeats a bound by hand."""
    import inspect

    from ivon_lora.config import arguments, commands, compare, describe_keys, evaluation, posterior_commands
    from ivon_lora.trainer import config as training_config
    from ivon_lora.validation import Bounds, check_fields

    for module in (arguments, commands, compare, evaluation, posterior_commands, training_config):
        assert "_require_" not in inspect.getsource(module), module.__name__
    assert (0.5 in Bounds(0.0, 1.0), 1.0 in Bounds(0.0, 1.0, high_inclusive=False), float("inf") in Bounds(0)) == (
        True, False, False)  # fmt: skip
    assert [str(b) for b in (Bounds(1), Bounds(0.0, low_inclusive=False), Bounds(0.0, 1.0, high_inclusive=False))] == [
        ">= 1", "> 0", "in [0, 1)"]  # fmt: skip
    for overrides, message in [(["lora_rank=0"], "Invalid lora_rank value: 0 (must be >= 1)"),
                               (["lora_dropout=1.0"], "Invalid lora_dropout value: 1.0 (must be in [0, 1))"),
                               (["ece_bins=[10, 0]"], "Invalid ece_bins value: 0 (must be >= 1)"),
                               (["quantization_bit=16"], "Invalid quantization_bit value: 16 (must be one of 4, 8)"),
                               (["prior_scale=nan"], "Invalid prior_scale value: nan (must be a finite number in (0, "),
                               (["learning_rate=-1"], "Invalid learning_rate value: -1 (must be >= 0)"),
                               (["ivon_eval_samples=-1"], "Invalid ivon_eval_samples value: -1 (must be >= 0)")]:  # fmt: skip
        with pytest.raises(RecipeError, match=re.escape(message)):
            load_recipe(DEMO, [f"output_dir={tmp_path / 'run'}", *overrides])
    keys = describe_keys()
    assert "lora_rank (int): LoRA rank r. Must be >= 1." in keys and "Must be one of auto, float32" in keys
    assert "ivon_eval_samples (int): Posterior samples averaged" in keys and "Must be >= 0." in keys
    with pytest.raises(ValueError, match=re.escape("Invalid fraction value: 2 (must be in [0, 1])")):
        check_fields(posterior_commands.PruneConfig(run_dir="r", fraction=2, out="o"))
