"""Run dirs: a finished run or checkpoint dir loaded back (base model + PEFT adapter, tokenizer, posterior,
recipe), what a run dir is before it loads (`describe_run`), the files a derived dir copies, and the package
versions every result records (`environment()`).

The file names are in `ivon_lora.filenames`; one file is read and written by `ivon_lora.fileio`, a whole output dir
by `ivon_lora.output_dir`: both below this module, because the posterior, which it loads, reads and writes there too.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

from .fileio import read_json, read_tensors
from .filenames import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    POSTERIOR_WEIGHTS_NAME,
    RECIPE_NAME,
    TOKENIZER_CONFIG_NAME,
    TOKENIZER_FILES,
)
from .output_dir import check_run_files
from .config import ModelArguments, Recipe, load_recipe
from .errors import RunDirError, UsageError
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
    """The run's resolved recipe: in `directory`, or in its parent for a checkpoint-N dir (a symlink is refused)."""
    for candidate in (directory, os.path.dirname(os.path.abspath(directory))):
        path = os.path.join(candidate, RECIPE_NAME)
        if os.path.islink(path):
            raise RunDirError(f"{path} is a symbolic link, not a regular file: ivon-lora reads and copies only regular "
                              "files of a run dir; put a copy of the file in place of the link")  # fmt: skip
        if os.path.isfile(path):
            return path
    return None


def optimizer_name(recipe: Recipe) -> str:
    return recipe.training_value("optim")  # as the saved recipe wrote it: no TrainingArguments built


def _base_model_of(run_dir: str, recipe: Recipe | None, adapter_config: dict) -> str:
    """The base model a run dir's adapter was trained on: its recipe's, else the adapter config's."""
    if recipe is not None:
        return recipe.model.model_name_or_path
    base = adapter_config.get("base_model_name_or_path")
    if not base:
        raise RunDirError(f"{run_dir}: no {RECIPE_NAME} here or in the parent dir, and {ADAPTER_CONFIG_NAME} names no "
                          f"base model: copy the run's {RECIPE_NAME} into it")  # fmt: skip
    return base


def check_remote_code(run_dir: str, recipe: Recipe | None, trust_remote_code: bool) -> None:
    """A run dir's saved `trust_remote_code: true` is not the user's consent to run its base model's code: as
    transformers asks it per call, the user passes --trust-remote-code (or trust_remote_code=True) each time."""
    if recipe is not None and recipe.model.trust_remote_code and not trust_remote_code:
        raise UsageError(f"{run_dir}: its base model {recipe.model.model_name_or_path!r} runs code of its own "
                         "(the run's recipe sets trust_remote_code: true): pass --trust-remote-code if you trust that "
                         "code (lm-eval: trust_remote_code=True in model_args)")  # fmt: skip


def describe_run(run_dir: str, taken: set, trust_remote_code: bool = False) -> dict:
    """What a run dir is, checked before any model loads: {"dir", "label", "recipe", "has_posterior", "dropout"}.

    The label names the run in reports: its optimizer (from the recipe), else "ivon" for a dir with a posterior,
    else the dir's name; a label already in `taken` gets " (baseline)" appended. `dropout` is the adapter's
    lora_dropout (MC dropout needs one).
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"Run dir {run_dir!r} does not exist")
    check_run_files(run_dir)
    if not os.path.isfile(os.path.join(run_dir, ADAPTER_CONFIG_NAME)):
        raise FileNotFoundError(f"{run_dir!r} is not a run or checkpoint dir: {ADAPTER_CONFIG_NAME} is missing")
    recipe_path = find_recipe(run_dir)
    recipe = load_recipe(recipe_path, for_training=False) if recipe_path else None
    adapter_config = read_json(os.path.join(run_dir, ADAPTER_CONFIG_NAME))
    _base_model_of(run_dir, recipe, adapter_config)
    check_remote_code(run_dir, recipe, trust_remote_code)
    dropout = adapter_config.get("lora_dropout") or 0.0
    has_posterior = os.path.isfile(os.path.join(run_dir, POSTERIOR_WEIGHTS_NAME))
    if recipe is not None:
        label = optimizer_name(recipe)
    else:
        label = "ivon" if has_posterior else os.path.basename(os.path.normpath(run_dir))
    if label in taken:
        label = f"{label} (baseline)"
    return {"dir": os.path.abspath(run_dir), "label": label, "recipe": recipe, "has_posterior": has_posterior,
            "dropout": dropout}  # fmt: skip


def load_run(directory: str, trust_remote_code: bool = False) -> Run:
    """Rebuild the base model the run was trained on, load its adapter and (IVON runs) its posterior.

    `trust_remote_code`: the caller's consent to run the base model's own code, which a run whose recipe sets
    trust_remote_code needs (`check_remote_code`)."""
    from peft import PeftModel

    from .builtin import BUILTIN_MODELS
    from .modeling import load_base_model, load_tokenizer

    check_run_files(directory)
    if not os.path.isfile(os.path.join(directory, ADAPTER_CONFIG_NAME)):
        raise FileNotFoundError(f"{directory!r} is not a run or checkpoint dir: {ADAPTER_CONFIG_NAME} is missing")
    recipe_path = find_recipe(directory)
    recipe = load_recipe(recipe_path, for_training=False) if recipe_path else None
    adapter_config = read_json(os.path.join(directory, ADAPTER_CONFIG_NAME))
    read_tensors(os.path.join(directory, ADAPTER_WEIGHTS_NAME))  # present and whole, before any model loads
    check_remote_code(directory, recipe, trust_remote_code)
    if recipe is not None:
        model_args, seed = recipe.model, recipe.training_value("seed")
    else:
        model_args, seed = ModelArguments(_base_model_of(directory, recipe, adapter_config)), 0
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


# What a derived dir (pruned, merged) takes of its source run: the adapter config, the tokenizer and the recipe. Not
# its weights, posterior or results (the derived dir writes its own), not a checkpoint's training state, and not any
# other file: a run dir may hold a user's notes, or links someone planted, that no output should carry.
COPIED_RUN_FILES = (ADAPTER_CONFIG_NAME, RECIPE_NAME, *TOKENIZER_FILES)


def copy_run_files(source: str, destination: str) -> None:
    """Copy the adapter config, tokenizer and recipe of a run dir, as regular files (a symlink is refused)."""
    check_run_files(source)
    for name in COPIED_RUN_FILES:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(destination, name))
    recipe = find_recipe(source)
    if recipe and not os.path.isfile(os.path.join(destination, RECIPE_NAME)):
        shutil.copyfile(recipe, os.path.join(destination, RECIPE_NAME))


def environment() -> dict:
    """Versions of the packages a result depends on, and under "cpu" what its CPU kernels ran on: the instruction
    set torch dispatched to (AVX2 and AVX-512 give other digits for the same seed) and the thread count."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for package in ("ivon-lora", "torch", "transformers", "peft", "accelerate", "datasets", "trl", "bitsandbytes"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    versions["cpu"] = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                       "machine": platform.machine()}  # fmt: skip
    return versions


def environment_text(versions: dict) -> str:
    """`environment()` in one line: "ivon-lora 0.1.0, torch 2.13.0, ..., CPU AVX512 (2 threads)"."""
    cpu = versions.get("cpu")
    packages = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "cpu")
    return packages + (f", CPU {cpu['capability']} ({cpu['threads']} threads)" if cpu else "")
