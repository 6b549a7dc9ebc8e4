"""`objective: sft` through the CLI: train writes adapter + posterior + metrics; eval, prune and export work on the
run dir; eval reproduces train's numbers; bad SFT recipes fail before any model loads."""

import json
import os

import pytest
import yaml

from ivon_lora import cli
from ivon_lora.config import load_recipe
from ivon_lora.errors import RecipeError, TaskDataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SFT = os.path.join(ROOT, "recipes", "demo-sft.yaml")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "ivon"
    args = ["train", DEMO_SFT, f"output_dir={out}", "max_steps=6", "max_train_samples=48", "max_eval_samples=12",
            "final_eval_samples=3", "disable_tqdm=true"]  # fmt: skip
    assert cli.main(args) == 0
    return str(out)


def test_train_writes_adapter_posterior_recipe_and_the_predictive_losses(sft_run):
    for name in ("adapter_model.safetensors", "adapter_config.json", "posterior.safetensors", "recipe.yaml",
                 "metrics.json", "diagnostics.json", "tokenizer_config.json"):  # fmt: skip
        assert os.path.isfile(os.path.join(sft_run, name)), name
    with open(os.path.join(sft_run, "metrics.json")) as f:
        report = json.load(f)
    assert report["objective"] == "sft" and report["data"]["eval"]["rows"] == 12
    mean, sampled = report["metrics"]["mean"], report["metrics"]["sampled"]
    assert sampled["samples"] == 3 and sampled["loss"] <= sampled["expected_loss"]
    assert mean["tokens"] == sampled["tokens"] > 0 and mean["perplexity"] == pytest.approx(2.718281828 ** mean["loss"])
    assert report["recipe"]["objective"] == "sft" and "packing" in report["recipe"]  # SFTConfig keys resolved
    assert {"torch", "transformers", "trl"} <= set(report["environment"])
    with open(os.path.join(sft_run, "recipe.yaml")) as f:
        assert yaml.safe_load(f)["dataset"] == "wordqa"


def test_eval_reproduces_trains_numbers_and_compares_a_baseline(sft_run, tmp_path):
    out = tmp_path / "eval"
    assert cli.main(["eval", sft_run, "--out", str(out), "--samples", "3", "--limit", "12", "--baseline", sft_run]) == 0
    with open(out / "eval.json") as f:
        result = json.load(f)
    with open(os.path.join(sft_run, "metrics.json")) as f:
        trained = json.load(f)["metrics"]
    (label, baseline) = result["runs"]
    for name in ("mean", "sampled"):
        for key in ("loss", "perplexity", "tokens"):
            assert result["runs"][label]["metrics"][name][key] == pytest.approx(trained[name][key], rel=1e-6)
    assert result["runs"][baseline]["metrics"] == result["runs"][label]["metrics"]
    assert "| 3 posterior samples |" in (out / "eval.md").read_text()


def test_eval_of_an_sft_run_refuses_multiple_choice_only_options(sft_run, tmp_path, capsys):
    assert cli.main(["eval", sft_run, "--out", str(tmp_path / "e"), "--temperature-scaling", "--select-split",
                     "test"]) == 2  # fmt: skip
    assert "--temperature-scaling is for multiple-choice tasks" in capsys.readouterr().err


def test_prune_and_export_work_on_an_sft_run(sft_run, tmp_path):
    from safetensors.torch import load_file

    assert cli.main(["prune", sft_run, "--out", str(tmp_path / "pruned"), "--fraction", "0.5"]) == 0
    pruned = load_file(str(tmp_path / "pruned" / "posterior.safetensors"))
    assert any((tensor == 0).any() for tensor in pruned.values())
    assert cli.main(["eval", str(tmp_path / "pruned"), "--out", str(tmp_path / "pruned-eval"), "--samples", "2"]) == 0
    assert cli.main(["export", sft_run, "--out", str(tmp_path / "merged")]) == 0
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "## Validation loss (builtin:wordqa, split validation, 12 rows)" in card and "objective: sft" in card


def test_sft_recipe_errors_name_the_key_before_any_model_loads(tmp_path):
    base = [f"output_dir={tmp_path / 'x'}"]
    with pytest.raises(RecipeError, match="'max_lenght' \\(did you mean 'max_length'\\?\\)"):
        load_recipe(DEMO_SFT, base + ["max_lenght=3"])
    with pytest.raises(RecipeError, match="objective"):
        load_recipe(DEMO_SFT, base + ["objective=dpo"])
    with pytest.raises(RecipeError, match="needs dataset .* or train_file"):
        load_recipe(DEMO_SFT, base + ["dataset=null"])
    with pytest.raises(RecipeError, match="'num_train_epoch' \\(did you mean 'num_train_epochs'\\?\\)"):
        load_recipe(DEMO_SFT, base + ["num_train_epoch=3"])


def test_a_bad_row_fails_before_the_model_loads(tmp_path, monkeypatch):
    from ivon_lora.commands import train

    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    monkeypatch.setattr(train, "_load_model", lambda *a: pytest.fail("the model was loaded"))
    recipe = load_recipe(DEMO_SFT, [f"output_dir={tmp_path / 'x'}", "dataset=null", f"train_file={rows}",
                                    f"eval_file={rows}"])  # fmt: skip
    with pytest.raises(TaskDataError, match="train.jsonl, row 0: .*not the assistant"):
        train.run_train(recipe)
    assert not (tmp_path / "x").exists()
