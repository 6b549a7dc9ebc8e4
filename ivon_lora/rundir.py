"""A finished run or checkpoint dir, loaded back: base model + PEFT adapter, tokenizer, posterior, recipe."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

from .posterior import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME, POSTERIOR_WEIGHTS_NAME, Posterior
from .recipe import Recipe, load_recipe

logger = logging.getLogger(__name__)

RECIPE_NAME = "recipe.yaml"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.jsonl"  # per-example probabilities of the final evaluation
MODEL_CARD_NAME = "README.md"
# Files of a run dir that describe one particular adapter and posterior, so a derived dir must not copy them.
RESULT_FILES = (ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME, METRICS_NAME, PREDICTIONS_NAME,
                MODEL_CARD_NAME)  # fmt: skip


@dataclass
class Run:
    directory: str
    model: object  # a peft.PeftModel
    tokenizer: object
    posterior: Posterior | None
    recipe: Recipe | None
    model_args: object  # the recipe's ModelArguments, or one naming the adapter's base model


def find_recipe(directory: str) -> str | None:
    """The run's resolved recipe: in `directory`, or in its parent for a checkpoint-N dir."""
    for candidate in (directory, os.path.dirname(os.path.abspath(directory))):
        path = os.path.join(candidate, RECIPE_NAME)
        if os.path.isfile(path):
            return path
    return None


def load_run(directory: str) -> Run:
    """Rebuild the base model the run was trained on, load its adapter and (IVON runs) its posterior."""
    from peft import PeftModel

    from .modeling import BUILTIN_MODELS, load_base_model, load_tokenizer
    from .recipe import ModelArguments

    if not os.path.isfile(os.path.join(directory, ADAPTER_CONFIG_NAME)):
        raise FileNotFoundError(f"{directory!r} is not a run or checkpoint dir: {ADAPTER_CONFIG_NAME} is missing")
    recipe_path = find_recipe(directory)
    recipe = load_recipe(recipe_path, check_output_dir=False) if recipe_path else None
    if recipe is not None:
        model_args, seed = recipe.model, recipe.training.seed
    else:
        with open(os.path.join(directory, ADAPTER_CONFIG_NAME)) as f:
            model_args, seed = ModelArguments(json.load(f)["base_model_name_or_path"]), 0
    # The tokenizer saved with the run is the one it was trained with.
    saved_tokenizer = os.path.isfile(os.path.join(directory, "tokenizer_config.json"))
    if saved_tokenizer and model_args.model_name_or_path not in BUILTIN_MODELS:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, padding_side="left")
    else:
        tokenizer = load_tokenizer(model_args)
    model = PeftModel.from_pretrained(load_base_model(model_args, tokenizer, seed=seed), directory)
    model.eval()
    has_posterior = os.path.isfile(os.path.join(directory, POSTERIOR_WEIGHTS_NAME))
    posterior = Posterior.load(directory) if has_posterior else None
    return Run(directory, model, tokenizer, posterior, recipe, model_args)


def check_new_output_dir(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
        raise FileExistsError(f"{path!r} exists and is not empty: choose another --out, or pass --overwrite")


@contextmanager
def staged_output_dir(path: str):
    """Yield a temporary sibling dir that replaces `path` only if the block succeeds."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.incomplete-")
    try:
        yield staging
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)


def copy_run_files(source: str, destination: str) -> None:
    """Copy the adapter config, tokenizer and recipe of a run dir; not its weights, posterior or results."""
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if os.path.isfile(path) and name not in RESULT_FILES and not name.startswith("."):
            shutil.copy2(path, os.path.join(destination, name))
    recipe = find_recipe(source)
    if recipe and not os.path.isfile(os.path.join(destination, RECIPE_NAME)):
        shutil.copy2(recipe, os.path.join(destination, RECIPE_NAME))


def prune_run(directory: str, out: str, fraction: float, scope: str = "global", mode: str = "zero",
              criterion: str = "snr", temperature: float = 1.0, overwrite: bool = False) -> Posterior:  # fmt: skip
    """Write a pruned (and optionally tempered) copy of a run's adapter + posterior to `out`; no model needed."""
    check_new_output_dir(out, overwrite)
    posterior = Posterior.load(directory).at_test_time(fraction, temperature, scope=scope, mode=mode, criterion=criterion)
    with staged_output_dir(out) as staging:
        copy_run_files(directory, staging)
        posterior.save(staging, include_mean=True)
    pruning = posterior.config["pruning"][-1]
    logger.info("pruned %d of %d adapter entries (%s, %s, %s) -> %s", pruning["num_pruned"], pruning["num_entries"],
                scope, mode, criterion, out)  # fmt: skip
    return posterior


def model_card(run: Run, metrics: dict | None) -> str:
    from .evaluation.report import SUMMARY_COLUMNS, predictives, table_cells

    base = run.model_args.model_name_or_path
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {base}",
        "tags: [ivon-lora, lora, ivon, variational]",
        "---",
        f"# {os.path.basename(os.path.abspath(run.directory))} (merged)",
        "",
        f"The posterior mean of an IVON-trained LoRA adapter on `{base}`, merged into the base weights. The full",
        "posterior (adapter + per-weight variance) is in `posterior/`: load it with `ivon_lora.Posterior.load` to",
        "sample, prune or evaluate with posterior averaging.",
    ]
    if run.posterior is not None:
        config = run.posterior.config
        lines += ["", "## Posterior", "", f"- optimizer steps: {config.get('step')}; ess: {config.get('ess')}; "
                  f"prior precision: {config.get('weight_decay')}"]  # fmt: skip
        for pruning in config.get("pruning", []):
            lines.append(f"- pruned {pruning['num_pruned']} of {pruning['num_entries']} entries "
                         f"({pruning['scope']}, {pruning['mode']}, by {pruning['criterion']})")  # fmt: skip
        if "temperature" in config:
            lines.append(f"- test-time temperature: {config['temperature']}")
    if metrics is not None:
        m = metrics["metrics"]
        lines += ["", f"## Metrics ({metrics['task']}, split {metrics['split']}, {m['num_examples']} examples)", "",
                  f"| predictive | {' | '.join(SUMMARY_COLUMNS)} |", "|---" * (1 + len(SUMMARY_COLUMNS)) + "|"]  # fmt: skip
        for name, values in predictives(m):
            name = "posterior mean" if name == "mean" else name
            lines.append(f"| {name} | {' | '.join(table_cells(values, SUMMARY_COLUMNS))} |")
        lines += ["", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in metrics["protocol"].items()) + "."]
        lines += ["", "Measured with " + ", ".join(f"{k} {v}" for k, v in metrics["environment"].items()) + "."]
    if run.recipe is not None:
        import yaml

        resolved = run.recipe.resolved()
        defaults = load_recipe(None, ["model_name_or_path=_", "output_dir=_"], check_output_dir=False).resolved()
        changed = {k: v for k, v in resolved.items() if v != defaults.get(k) or k == "model_name_or_path"}
        changed.pop("output_dir", None)
        lines += ["", "## Recipe (keys that differ from the defaults)", "", "```yaml",
                  yaml.safe_dump(changed, sort_keys=True).strip(), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def export_run(directory: str, out: str, overwrite: bool = False) -> None:
    """Merge the adapter's (posterior) mean into the base model and save it with its posterior and a model card."""
    check_new_output_dir(out, overwrite)
    run = load_run(directory)
    metrics_path = os.path.join(directory, METRICS_NAME)
    metrics = json.load(open(metrics_path)) if os.path.isfile(metrics_path) else None
    card = model_card(run, metrics)
    with staged_output_dir(out) as staging:
        posterior_dir = os.path.join(staging, "posterior")
        os.makedirs(posterior_dir)
        for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME):
            if os.path.isfile(os.path.join(directory, name)):
                shutil.copy2(os.path.join(directory, name), os.path.join(posterior_dir, name))
        run.model.merge_and_unload().save_pretrained(staging, safe_serialization=True)
        run.tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, MODEL_CARD_NAME), "w") as f:
            f.write(card)
    logger.info("exported the merged model to %s", out)
