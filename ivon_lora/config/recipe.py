"""`ivon-lora train`'s recipe: a flat YAML mapping (plus key=value overrides) -> `Recipe` (`ModelArguments`,
`DataArguments` or `SFTDataArguments`, `RunArguments`, and the objective's TrainingArguments), checked before any
model or data loads: unknown keys and wrong values (`check_values`), renamed keys (`RENAMED_RECIPE_KEYS`), task and
protocol names, data files, the local base model dir (`check_local_model_dir`), the checkpoint to resume from, and an
output_dir holding a previous result. A saved run's recipe parses its training keys only when read
(`_DeferredTraining`): loading a run for inference imports neither transformers' TrainingArguments nor TRL.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import typing
from dataclasses import dataclass

import yaml

from ..errors import RecipeError
from ..objectives import OBJECTIVES, get_objective
from ..validation import requirement
from . import objective_parts  # noqa: F401 (provides the recipe's parts of each objective to its record)
from .arguments import DataArguments, ModelArguments, RunArguments, SFTDataArguments
from .parsing import (
    COMMAND_LINE,
    _field_types,
    _type_name,
    check_values,
    parse_overrides,
    parse_values,
    read_yaml,
    rename_keys,
    renamed_keys,
)

if typing.TYPE_CHECKING:
    from ..trainer import IVONTrainingArguments

logger = logging.getLogger(__name__)


def _run_classes(objective: str) -> tuple:
    """The recipe's model, data and run argument classes for `objective` (all but the training arguments)."""
    return ModelArguments, get_objective(objective).part("data_arguments"), RunArguments


def argument_classes(objective: str = "choice") -> tuple:
    """The recipe's argument classes for `objective`: `_run_classes` and its record's training arguments, which
    import transformers' TrainingArguments (IVONTrainingArguments), or for sft TRL's SFTConfig (IVONSFTConfig)."""
    return (*_run_classes(objective), get_objective(objective).part("training_arguments"))


@dataclass
class _DeferredTraining:
    """A saved run's training keys, parsed into its TrainingArguments only when something reads them: loading a run
    for inference reads the model, data and run keys, and `training_value` reads a saved seed or optim as written."""

    values: dict
    objective: str
    where: str

    def parse(self):
        classes = argument_classes(self.objective)
        values = check_values(self.values, classes, self.where)
        return parse_values(values, classes, self.where)[-1]


@dataclass
class Recipe:
    model: ModelArguments
    data: DataArguments | SFTDataArguments
    run: RunArguments
    # IVONTrainingArguments (IVONSFTConfig for objective: sft); a saved run's recipe parses it on first read.
    _training: IVONTrainingArguments | _DeferredTraining
    source: str | None = None

    @property
    def objective(self) -> str:
        return self.run.objective

    @property
    def training(self) -> IVONTrainingArguments:
        if isinstance(self._training, _DeferredTraining):
            self._training = self._training.parse()
        return self._training

    def training_value(self, key: str):
        """One training key (seed, optim, ...): as the saved recipe wrote it where it did (no TrainingArguments
        built), else the parsed training arguments' value (an enum's value for transformers' enums)."""
        if isinstance(self._training, _DeferredTraining) and key in self._training.values:
            return self._training.values[key]
        value = getattr(self.training, key)
        return getattr(value, "value", value)

    def resolved(self) -> dict:
        """Every key of every argument class with its resolved value: a recipe that reproduces this run."""
        resolved = {}
        for arguments in (self.model, self.data, self.run):
            resolved.update(dataclasses.asdict(arguments))
        # TrainingArguments.to_dict turns enums and nested configs into plain values.
        init_keys = {f.name for f in dataclasses.fields(self.training) if f.init and f.name not in RENAMED_RECIPE_KEYS}
        resolved.update({k: v for k, v in self.training.to_dict().items() if k in init_keys})
        # to_dict masks every *_token field as "<NAME>": a reloaded recipe would take the mask for the value. Write
        # SFTConfig's eos_token / pad_token as they are, and never a secret (hub_token: from the environment).
        for key in resolved:
            if key.endswith("_token") and key in init_keys:
                resolved[key] = None if key == "hub_token" else getattr(self.training, key)
        return yaml.safe_load(yaml.safe_dump(resolved, default_flow_style=False))  # plain YAML types only


def load_recipe(path: str | None, overrides: list[str] = (), for_training: bool = True) -> Recipe:
    """Read `path` (YAML), apply `overrides` (key=value), validate every key and value, check the files.

    `for_training`: the recipe of a run about to train: its data files must exist, and a non-empty output_dir is
    an error unless overwriting or resuming is asked for. False for the saved recipe of a finished run, which is
    read wherever the run dir now is: its relative data paths may not resolve from here, and nothing reads them.
    Its training keys are checked and parsed when first read (`Recipe.training`): loading a run for inference
    imports neither transformers' TrainingArguments nor TRL.
    """
    where = f" in {path}" if path else ""
    values = rename_keys(read_yaml(path) if path is not None else {}, RENAMED_RECIPE_KEYS, where)
    command_line = rename_keys(parse_overrides(list(overrides)), RENAMED_RECIPE_KEYS, COMMAND_LINE)
    values.update(command_line)
    objective = values.get("objective", "choice")
    if objective not in OBJECTIVES:
        raise RecipeError(f"Recipe key 'objective'{where}: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if for_training:
        classes = argument_classes(objective)
        values = check_values(values, classes, where, help_hint=(
            " Keys are TrainingArguments fields plus ivon-lora's model/data/run keys; `ivon-lora train --help-keys` "
            "lists them."), command_line=command_line)  # fmt: skip
    else:
        classes = _run_classes(objective)
        run_keys = _field_types(classes)
        values = {**values, **check_values({k: v for k, v in values.items() if k in run_keys}, classes, where,
                                           command_line=command_line)}  # fmt: skip
    if "model_name_or_path" not in values:
        raise RecipeError(f"Recipe{where} has no model_name_or_path")
    if "output_dir" not in values:
        raise RecipeError(f"Recipe{where} has no output_dir")
    if for_training:
        model, data, run, training = parse_values(values, classes, where, command_line=command_line)
    else:
        model, data, run = parse_values(values, classes, where, command_line=command_line)
        training = _DeferredTraining(values, objective, where)
    recipe = Recipe(model, data, run, training, source=path)
    _check_names(recipe)
    if for_training:
        _check_ivon_keys_unused(recipe, values, command_line, where)
        _check_files(recipe)
    return recipe


# Recipe keys renamed: former name -> name. The former name keeps working, with a FutureWarning naming the new one.
# The training arguments' (IVONTrainingArguments keeps them as deprecated fields for its own callers, in
# RENAMED_TRAINING_FIELDS; a test holds the two equal) are written here, as config imports no trainer code.
RENAMED_TRAINING_KEYS = {"train_mc_samples": "ivon_mc_samples", "ivon_eval_mc_samples": "ivon_eval_samples"}
RENAMED_RECIPE_KEYS = {**renamed_keys((ModelArguments, DataArguments, SFTDataArguments, RunArguments)),
                       **RENAMED_TRAINING_KEYS}  # fmt: skip


def _check_ivon_keys_unused(recipe: Recipe, values: dict, command_line, where: str) -> None:
    """ivon_* keys set away from their defaults while another optimizer trains: an error when typed on the command
    line (the user asked for both now), a warning when the file holds them (one recipe usually serves an IVON run
    and its AdamW baseline, `optim=adamw_torch` on the command line)."""
    if recipe.training.use_ivon:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(recipe.training) if f.name.startswith("ivon_")}
    ignored = sorted(key for key in values if key in defaults and values[key] != defaults[key])
    typed = [key for key in ignored if key in command_line]
    optim = getattr(recipe.training.optim, "value", recipe.training.optim)
    if typed:
        raise RecipeError(f"Recipe key(s) {', '.join(typed)}{COMMAND_LINE}: optim is {optim!r}, which does not read "
                          "ivon_* keys: drop them, or set optim=ivon")  # fmt: skip
    if ignored:
        logger.warning("optim is %r: the recipe's %s%s are not used (they configure optim=ivon only)", optim,
                       ", ".join(ignored), where)  # fmt: skip


def _check_names(recipe: Recipe) -> None:
    from ..tasks import get_protocol, get_task

    if not get_objective(recipe.objective).dataset_is_task:
        return  # e.g. an SFT Hub id can only be checked by loading it: load_sft_split does, before the model loads

    try:
        task = get_task(recipe.data.dataset)
    except KeyError as error:
        raise RecipeError(f"Recipe key 'dataset': {error.args[0]}") from None
    try:
        get_protocol(recipe.run.protocol)
    except KeyError as error:
        raise RecipeError(f"Recipe key 'protocol': {error.args[0]}") from None
    for key in ("train_split", "eval_split"):
        split = getattr(recipe.data, key)
        if split not in task.splits:
            raise RecipeError(
                f"Recipe key {key!r}: task {task.name!r} has no split {split!r} ({', '.join(task.splits)})"
            )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def check_local_model_dir(path: str, need_weights: bool = True) -> None:
    """A local base model dir holds a config.json and weights (`need_weights=False`: a tokenizer or a config at
    least); else one line naming model_name_or_path (transformers would fail with a tokenizer-conversion or
    file-not-found traceback that names neither)."""
    names = os.listdir(path)
    if not need_weights:
        if not {"config.json", "tokenizer_config.json", "tokenizer.json"} & set(names):
            raise RecipeError(f"Recipe key 'model_name_or_path': the local dir {path!r} holds no config.json and no "
                              "tokenizer: point it at a saved model (save_pretrained's dir), a Hub id, or a builtin: "
                              "model")  # fmt: skip
        return
    missing = [what for what, present in (("config.json", "config.json" in names),
                                          ("weights (*.safetensors or *.bin)", any(n.endswith(WEIGHT_SUFFIXES) for n in names)))
               if not present]  # fmt: skip
    if missing:
        raise RecipeError(
            f"Recipe key 'model_name_or_path': the local dir {path!r} holds no {' and no '.join(missing)}: "
            "point it at a saved model (save_pretrained's dir), a Hub id, or a builtin: model"
        )


def _check_files(recipe: Recipe) -> None:
    for key in ("train_file", "eval_file"):
        path = getattr(recipe.data, key)
        if path is not None and not os.path.exists(path):
            raise RecipeError(f"Recipe key {key!r}: file {path!r} does not exist")
    _check_resume_checkpoint(recipe.training.resume_from_checkpoint)
    _check_resume_fits(recipe)
    if os.path.isdir(recipe.model.model_name_or_path) and not recipe.model.gguf_file:
        check_local_model_dir(recipe.model.model_name_or_path)  # config and weights, before anything loads
    output_dir = recipe.training.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RecipeError(f"Recipe key 'output_dir': {output_dir!r} is a file, not a dir: choose another output_dir")
    _check_starting_point(recipe)
    # Under a multi-process launch only the main process checks and locks: the others would see its first files.
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from ..output_dir import check_overwritable, lock_output_dir

    lock_output_dir(output_dir)  # one train per output_dir at a time, held until the command ends
    if recipe.run.overwrite_output_dir and recipe.training.resume_from_checkpoint is None:
        check_overwritable(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not recipe.run.overwrite_output_dir:
        if recipe.training.resume_from_checkpoint is None:
            raise RecipeError(
                f"output_dir {output_dir!r} exists and is not empty: choose another output_dir, "
                "or set overwrite_output_dir=true to write into it, or resume_from_checkpoint=... to resume."
            )


def _check_starting_point(recipe: Recipe) -> None:
    """prior_scale scales prior_from's prior (alone it would be recorded and ignored). The run named by prior_from /
    init_from is read while this run writes output_dir: it must not be output_dir or inside it (an overwrite or a
    checkpoint rotation would delete it, and the provenance would name itself)."""
    if recipe.run.prior_scale != 1.0 and recipe.run.prior_from is None:
        raise RecipeError(f"Recipe key 'prior_scale': {recipe.run.prior_scale} scales the prior of prior_from, which "
                          "is not set: set prior_from, or leave prior_scale at 1")  # fmt: skip
    output_dir = os.path.realpath(recipe.training.output_dir)
    for key in ("prior_from", "init_from"):
        source = getattr(recipe.run, key)
        if source is None:
            continue
        real = os.path.realpath(source)
        if real == output_dir or real.startswith(output_dir + os.sep):
            raise RecipeError(f"Recipe key {key!r}: {source!r} is {'' if real == output_dir else 'inside '}this run's "
                              "output_dir, which training writes over: copy that run elsewhere first, or choose "
                              "another output_dir")  # fmt: skip


def _check_resume_checkpoint(checkpoint) -> None:
    """A checkpoint to resume from must be a complete checkpoint-N dir of the Trainer (its save finished)."""
    from ..filenames import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

    if checkpoint is None or isinstance(checkpoint, bool):
        return
    if not os.path.isdir(checkpoint):
        raise RecipeError(f"Recipe key 'resume_from_checkpoint': {checkpoint!r} does not exist (a checkpoint-N dir of "
                          "the run's output_dir)")  # fmt: skip
    missing = [name for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "trainer_state.json")
               if not os.path.isfile(os.path.join(checkpoint, name))]  # fmt: skip
    if missing:
        raise RecipeError(
            f"Recipe key 'resume_from_checkpoint': {checkpoint!r} is not a complete checkpoint "
            f"({', '.join(missing)} missing; a run killed while saving it?): resume from an earlier one"
        )


def _check_resume_fits(recipe: Recipe) -> None:
    """The checkpoint to resume from holds an adapter of this recipe's shape (LoRA rank): checked before the model
    loads and before output_dir is written, where loading it would fail with a size mismatch."""
    from ..fileio import read_json
    from ..filenames import ADAPTER_CONFIG_NAME

    checkpoint = recipe.training.resume_from_checkpoint
    if not isinstance(checkpoint, str):
        return
    saved = read_json(os.path.join(checkpoint, ADAPTER_CONFIG_NAME))
    for key, saved_key in (("lora_rank", "r"), ("lora_alpha", "lora_alpha")):
        ours = getattr(recipe.model, key)
        if saved_key in saved and saved[saved_key] != ours:
            raise RecipeError(f"Recipe key 'resume_from_checkpoint': {checkpoint!r} holds an adapter of {key} "
                              f"{saved[saved_key]}, this recipe has {key} {ours}: resume with the run's own recipe "
                              "(its recipe.yaml), or start a new run")  # fmt: skip


def describe_keys() -> str:
    """Every recipe key with its type and help; for TrainingArguments, only what IVONTrainingArguments adds."""
    from transformers import TrainingArguments

    from ..trainer.config import IVONTrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)} - {"optim", "learning_rate"}
    lines = []
    for cls in (*argument_classes("choice"), SFTDataArguments):
        hints = typing.get_type_hints(cls)
        lines.append(
            f"# {cls.__name__}" + (" (objective: sft, in place of DataArguments)" if cls is SFTDataArguments else "")
        )
        for f in dataclasses.fields(cls):
            if (
                f.init
                and f.name not in RENAMED_RECIPE_KEYS
                and not (cls is IVONTrainingArguments and f.name in inherited)
            ):
                must = f" Must be {requirement(f)}." if requirement(f) else ""
                lines.append(f"  {f.name} ({_type_name(hints[f.name])}): {f.metadata.get('help', '')}{must}")
    lines.append("# ...and every other transformers.TrainingArguments field (output_dir, max_steps, bf16, seed, ...);")
    lines.append("# with objective: sft, every trl.SFTConfig field too (max_length, packing, assistant_only_loss, ...)")
    return "\n".join(lines)
