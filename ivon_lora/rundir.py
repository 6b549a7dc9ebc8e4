"""Run dirs: a finished run or checkpoint dir loaded back (base model + PEFT adapter, tokenizer, posterior,
recipe), what a run dir is before it loads (`describe_run`), the files a derived dir copies, and the package
versions every result records (`environment()`).

The file names are in `ivon_lora.artifacts`, with the writers (atomic file, staged output dir) that every
command uses: there, in the leaf, because the posterior, which this module loads, writes atomically too.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

from .artifacts import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    POSTERIOR_WEIGHTS_NAME,
    RECIPE_NAME,
    RESULT_FILES,
    TOKENIZER_CONFIG_NAME,
    read_json,
    read_tensors,
    recover_final_files,
)
from .config import ModelArguments, Recipe, load_recipe
from .errors import UsageError
from .posterior import Posterior

logger = logging.getLogger(__name__)


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


def optimizer_name(recipe: Recipe) -> str:
    return recipe.training_value("optim")  # as the saved recipe wrote it: no TrainingArguments built


def describe_run(run_dir: str, taken: set) -> dict:
    """What a run dir is, checked before any model loads: {"dir", "label", "recipe", "has_posterior", "dropout"}.

    The label names the run in reports: its optimizer (from the recipe), else "ivon" for a dir with a posterior,
    else the dir's name; a label already in `taken` gets " (baseline)" appended. `dropout` is the adapter's
    lora_dropout (MC dropout needs one).
    """
    recover_final_files(run_dir)  # a train killed while moving its final files in: finish the move
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"Run dir {run_dir!r} does not exist")
    if not os.path.isfile(os.path.join(run_dir, ADAPTER_CONFIG_NAME)):
        raise FileNotFoundError(f"{run_dir!r} is not a run or checkpoint dir: {ADAPTER_CONFIG_NAME} is missing")
    recipe_path = find_recipe(run_dir)
    recipe = load_recipe(recipe_path, for_training=False) if recipe_path else None
    dropout = read_json(os.path.join(run_dir, ADAPTER_CONFIG_NAME)).get("lora_dropout") or 0.0
    has_posterior = os.path.isfile(os.path.join(run_dir, POSTERIOR_WEIGHTS_NAME))
    if recipe is not None:
        label = optimizer_name(recipe)
    else:
        label = "ivon" if has_posterior else os.path.basename(os.path.normpath(run_dir))
    if label in taken:
        label = f"{label} (baseline)"
    return {"dir": os.path.abspath(run_dir), "label": label, "recipe": recipe, "has_posterior": has_posterior,
            "dropout": dropout}  # fmt: skip


def load_run(directory: str) -> Run:
    """Rebuild the base model the run was trained on, load its adapter and (IVON runs) its posterior."""
    from peft import PeftModel

    from .builtin import BUILTIN_MODELS
    from .modeling import load_base_model, load_tokenizer

    recover_final_files(directory)  # a train killed while moving its final files in: finish the move
    if not os.path.isfile(os.path.join(directory, ADAPTER_CONFIG_NAME)):
        raise FileNotFoundError(f"{directory!r} is not a run or checkpoint dir: {ADAPTER_CONFIG_NAME} is missing")
    recipe_path = find_recipe(directory)
    recipe = load_recipe(recipe_path, for_training=False) if recipe_path else None
    adapter_config = read_json(os.path.join(directory, ADAPTER_CONFIG_NAME))
    read_tensors(os.path.join(directory, ADAPTER_WEIGHTS_NAME))  # present and whole, before any model loads
    if recipe is not None:
        model_args, seed = recipe.model, recipe.training_value("seed")
    else:
        model_args, seed = ModelArguments(adapter_config["base_model_name_or_path"]), 0
    # The tokenizer saved with the run is the one it was trained with.
    saved_tokenizer = os.path.isfile(os.path.join(directory, TOKENIZER_CONFIG_NAME))
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


def copy_run_files(source: str, destination: str) -> None:
    """Copy the adapter config, tokenizer and recipe of a run dir; not its weights, posterior or results."""
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if os.path.isfile(path) and name not in RESULT_FILES and not name.startswith("."):
            shutil.copy2(path, os.path.join(destination, name))
    recipe = find_recipe(source)
    if recipe and not os.path.isfile(os.path.join(destination, RECIPE_NAME)):
        shutil.copy2(recipe, os.path.join(destination, RECIPE_NAME))


def check_out_apart(out: str, inputs: dict[str, str | None]) -> None:
    """Refuse an output dir that is, is inside, or contains an input run dir (`inputs`: what -> dir): replacing it
    would delete the input (or, inside it, part of a run another command reads)."""
    target = os.path.realpath(out)
    for what, directory in inputs.items():
        if directory is None:
            continue
        source = os.path.realpath(directory)
        relation = ("is" if target == source else "is inside" if target.startswith(source + os.sep)
                    else "contains" if source.startswith(target + os.sep) else None)  # fmt: skip
        if relation:
            raise UsageError(f"--out {out!r} {relation} the {what} {directory!r}, which it would replace: choose an "
                             "--out outside every input run dir")


def environment() -> dict:
    """Versions of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("ivon-lora", "torch", "transformers", "peft", "accelerate", "datasets", "trl", "bitsandbytes"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions
