"""Run dirs (ivon_lora.rundir): finding the recipe, describing a run before it loads, loading it back for inference
without the training stack, copying its files, refusing an --out over an input, the recorded versions.

The run dir here is made without training (a tiny Llama with a fresh LoRA, a posterior of constant variance and the
resolved demo recipe): what these functions read, at no training cost."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from ivon_lora.filenames import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    METRICS_NAME,
    POSTERIOR_CONFIG_NAME,
    POSTERIOR_WEIGHTS_NAME,
    RECIPE_NAME,
)
from ivon_lora.output_dir import check_out_apart
from ivon_lora.posterior import FORMAT_VERSION
from ivon_lora.errors import RunDirError, UsageError
from ivon_lora.rundir import copy_run_files, describe_run, environment, find_recipe, load_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo.yaml")
# Modules that only training needs: loading a run for inference imports none of them.
TRAINING_MODULES = ("transformers.trainer", "transformers.training_args", "trl", "ivon_lora.trainer")


def _write_run(directory, optim: str = "ivon", seed: int = 7) -> dict:
    """An untrained run dir of the demo recipe (tiny Llama, q/v LoRA r=4); returns its adapter tensors."""
    from ivon_lora.config import load_recipe
    from ivon_lora.modeling import apply_lora, load_base_model, load_tokenizer
    from ivon_lora.posterior import Posterior, adapter_parameters

    overrides = [
        f"output_dir={directory}",
        f"optim={optim}",
        f"seed={seed}",
        "lora_target=[q_proj, v_proj]",
        "lora_rank=4",
        "lora_dropout=0.1",
    ]
    recipe = load_recipe(DEMO, overrides)
    tokenizer = load_tokenizer(recipe.model)
    model = apply_lora(load_base_model(recipe.model, tokenizer, seed=seed), recipe.model)
    with torch.no_grad():
        for parameter in adapter_parameters(model).values():
            parameter.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))  # B != 0: the adapter acts
    model.save_pretrained(str(directory))
    mean = {key: p.detach().float().clone() for key, p in adapter_parameters(model).items()}
    if optim == "ivon":
        variance = {key: torch.full_like(value, 1e-4) for key, value in mean.items()}
        Posterior(mean, variance, {"format_version": FORMAT_VERSION}).save(str(directory))
    with open(os.path.join(directory, RECIPE_NAME), "w") as f:
        yaml.safe_dump(recipe.resolved(), f)
    return mean


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rundir") / "ivon"
    mean = _write_run(directory)
    return str(directory), mean


def test_load_run_rebuilds_the_model_adapter_and_posterior(tiny_run):
    directory, mean = tiny_run
    run = load_run(directory)
    assert run.directory == directory and run.recipe.objective == "choice"
    assert run.model_args.model_name_or_path == "builtin:tiny-llama"
    assert set(run.posterior.mean) == set(mean)
    for key, value in mean.items():
        assert torch.equal(run.posterior.mean[key], value)
        assert torch.all(run.posterior.variance[key] == 1e-4)
    from ivon_lora.posterior import adapter_parameters

    loaded = adapter_parameters(run.model)  # the adapter PEFT loaded into the model is the saved mean
    assert set(loaded) == set(mean) and all(torch.equal(loaded[key].detach(), value) for key, value in mean.items())


@pytest.mark.slow
def test_loading_a_run_for_inference_imports_no_training_code(tiny_run):
    """`load_run` (and describe_run) read the saved recipe's model, data and run keys; the training arguments, hence
    transformers' Trainer / TrainingArguments and TRL, are imported only when something reads them."""
    directory, _ = tiny_run
    code = (
        "import sys, json\n"
        "from ivon_lora.rundir import describe_run, load_run\n"
        f"described = describe_run({directory!r}, set())\n"
        f"run = load_run({directory!r})\n"
        f"print(json.dumps([described['label'], run.recipe.training_value('seed'), run.posterior is not None,\n"
        f"                  sorted(m for m in {TRAINING_MODULES!r} if m in sys.modules)]))\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    label, seed, has_posterior, imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert (label, seed, has_posterior) == ("ivon", 7, True)
    assert imported == []


def test_reading_the_training_keys_parses_them_as_training_would(tiny_run):
    directory, _ = tiny_run
    from ivon_lora.config import load_recipe

    saved = load_recipe(os.path.join(directory, RECIPE_NAME), for_training=False)
    assert saved.training_value("seed") == 7 and saved.training_value("optim") == "ivon"
    training = saved.training  # parsed on first read, then kept
    assert type(training).__name__ == "IVONTrainingArguments" and saved.training is training
    assert training.seed == 7 and training.learning_rate == saved.training_value("learning_rate")


def test_find_recipe_looks_in_the_dir_then_its_parent(tiny_run, tmp_path):
    directory, _ = tiny_run
    assert find_recipe(directory) == os.path.join(directory, RECIPE_NAME)
    checkpoint = os.path.join(directory, "checkpoint-9")
    os.makedirs(checkpoint)
    try:
        assert find_recipe(checkpoint) == os.path.join(directory, RECIPE_NAME)
    finally:
        os.rmdir(checkpoint)
    assert find_recipe(str(tmp_path)) is None


def test_describe_run_labels_by_optimizer_and_marks_a_second_label(tiny_run, tmp_path):
    directory, _ = tiny_run
    first = describe_run(directory, set())
    assert first["label"] == "ivon" and first["has_posterior"] and first["dir"] == os.path.abspath(directory)
    assert first["dropout"] == 0.1 and first["recipe"].model.lora_rank == 4
    assert describe_run(directory, {"ivon"})["label"] == "ivon (baseline)"
    no_recipe = tmp_path / "copied-run"
    shutil.copytree(directory, no_recipe)
    os.remove(no_recipe / RECIPE_NAME)
    with pytest.raises(RunDirError, match="names no base model: copy the run's recipe.yaml into it"):
        describe_run(str(no_recipe), set())
    config = json.loads((no_recipe / ADAPTER_CONFIG_NAME).read_text())
    config["base_model_name_or_path"] = first["recipe"].model.model_name_or_path  # as PEFT writes it for a Hub base
    (no_recipe / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    assert describe_run(str(no_recipe), set())["label"] == "ivon"  # a posterior, no recipe
    os.remove(no_recipe / POSTERIOR_WEIGHTS_NAME)
    assert describe_run(str(no_recipe), set())["label"] == "copied-run"


def test_describe_run_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        describe_run(str(tmp_path / "nowhere"), set())
    with pytest.raises(FileNotFoundError, match=f"not a run or checkpoint dir: {ADAPTER_CONFIG_NAME} is missing"):
        describe_run(str(tmp_path), set())
    with pytest.raises(FileNotFoundError, match=f"{ADAPTER_CONFIG_NAME} is missing"):
        load_run(str(tmp_path))


def test_copy_run_files_copies_config_and_recipe_not_weights_or_results(tiny_run, tmp_path):
    directory, _ = tiny_run
    source = tmp_path / "source"
    shutil.copytree(directory, source)
    (source / METRICS_NAME).write_text("{}")
    (source / ".hidden").write_text("x")
    (source / "notes.txt").symlink_to(tmp_path / "secret.txt")  # a file no command knows: never copied
    (tmp_path / "secret.txt").write_text("secret")
    destination = tmp_path / "copy"
    destination.mkdir()
    copy_run_files(str(source), str(destination))
    assert sorted(os.listdir(destination)) == sorted([ADAPTER_CONFIG_NAME, RECIPE_NAME])
    assert not {ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME} & set(os.listdir(destination))
    checkpoint = source / "checkpoint-3"  # a checkpoint's recipe is its parent's
    checkpoint.mkdir()
    shutil.copy2(source / ADAPTER_CONFIG_NAME, checkpoint / ADAPTER_CONFIG_NAME)
    from_checkpoint = tmp_path / "from-checkpoint"
    from_checkpoint.mkdir()
    copy_run_files(str(checkpoint), str(from_checkpoint))
    assert (from_checkpoint / RECIPE_NAME).read_text() == (source / RECIPE_NAME).read_text()


@pytest.mark.parametrize("name", ["special_tokens_map.json", ADAPTER_CONFIG_NAME, RECIPE_NAME])
def test_a_run_file_that_is_a_symlink_is_refused_naming_it(name, tiny_run, tmp_path):
    directory, _ = tiny_run
    source = tmp_path / "source"
    shutil.copytree(directory, source)
    secret = tmp_path / "secret.json"
    secret.write_text((source / name).read_text() if (source / name).exists() else "{}")
    (source / name).unlink(missing_ok=True)
    (source / name).symlink_to(secret)
    destination = tmp_path / "copy"
    destination.mkdir()
    for read in (lambda: copy_run_files(str(source), str(destination)), lambda: describe_run(str(source), set())):
        with pytest.raises(RunDirError, match=f"{name} is a symbolic link, not a regular file"):
            read()
    assert os.listdir(destination) == []


@pytest.mark.parametrize("where,relation", [(".", "is"), ("./eval-out", "is inside"), ("..", "contains")])
def test_an_out_over_an_input_run_is_refused(where, relation, tmp_path):
    run = tmp_path / "runs" / "ivon"
    run.mkdir(parents=True)
    out = os.path.normpath(os.path.join(run, where))
    with pytest.raises(UsageError, match=f"--out '{out}' {relation} the run dir '{run}'"):
        check_out_apart(out, {"run dir": str(run), "baseline": None})
    check_out_apart(str(tmp_path / "runs" / "elsewhere"), {"run dir": str(run)})  # a sibling is fine


def test_environment_records_the_installed_versions():
    import peft
    import transformers

    versions = environment()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__ and versions["peft"] == peft.__version__
    assert {"ivon-lora", "accelerate", "datasets", "trl", "bitsandbytes"} <= set(versions)
    assert versions["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512
    assert versions["cpu"]["threads"] == torch.get_num_threads()
