"""Typed configs of every command: a flat YAML mapping (plus key=value overrides) -> argument dataclasses.

`ivon-lora train` reads a recipe (`ModelArguments`, `DataArguments`, `RunArguments`, `IVONTrainingArguments`);
eval, prune, export, inspect and generate read `EvalConfig`, `PruneConfig`, `ExportConfig`, `InspectConfig`,
`GenerateConfig` the same way, from a YAML file, key=value overrides and their flags. A small pre-pass
(`check_values`) reports unknown keys with a "did you mean" and wrong types naming the key, and accepts YAML's string
spellings of floats (`1e6`); HfArgumentParser's `parse_dict` then builds the dataclasses. Everything a config can
get wrong (unknown key, wrong type, missing file, an output_dir holding a previous result) is reported here, naming
the key, before any model or data loads.

The vocabularies the values are checked against live in the leaf `ivon_lora.vocabulary`, and the training
arguments (transformers' TrainingArguments) are imported only to build them: this module imports neither the
evaluation nor the trainer code at import time, and a saved run's recipe parses its training keys only when read.

Longer than this project's ~400-line guide on purpose: the recipe's argument classes and the command configs share
the one pre-pass that checks keys and values, and a newcomer looking for any key's meaning finds it in this file.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field

import yaml

from .errors import RecipeError
from .objectives import OBJECTIVES, get_objective
from .vocabulary import (
    ANSWER_SCORINGS,
    DECODING_MODES,
    DEFAULT_ECE_BINS,
    DEFAULT_PRUNE_FRACTIONS,
    DEFAULT_SELECTION_CRITERION,
    PRUNE_CRITERIA,
    PRUNE_MODES,
    PRUNE_SCOPES,
    selection_criteria,
)

if typing.TYPE_CHECKING:
    from .trainer import IVONTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Hub id or local dir of the base model, or builtin:tiny-llama / builtin:tiny-qwen2 (random "
                          "demo models) / builtin:smollm2-135m (SmolLM2-135M-Instruct from the package index)."}
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "A GGUF file in model_name_or_path (local dir or Hub id) to load, dequantized."}
    )
    dtype: str = field(default="auto", metadata={"help": "Base weights: auto, float32, bfloat16 or float16."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    lora_target: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Module names to adapt, or ['all-linear']."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    quantization_bit: int | None = field(
        default=None, metadata={"help": "Load the base in 4-bit NF4 or 8-bit with bitsandbytes (QLoRA); None: no."}
    )
    prompt_format: str = field(
        default="plain", metadata={"help": "plain: the task prompt as is; chat: wrapped in the tokenizer's chat template."}
    )
    chat_template_kwargs: dict | None = field(
        default=None, metadata={"help": "Extra chat-template arguments, e.g. {enable_thinking: false} for Qwen3."}
    )
    answer_scoring: str = field(
        default="letter", metadata={"help": "Multiple choice: letter (one answer token at the prompt's end), text "
                                            "(each answer text's summed log-prob, lm-eval acc) or text_norm (divided "
                                            "by its characters, lm-eval acc_norm); K-way softmax in every case."})

    def __post_init__(self):
        from .choice.prompts import PROMPT_FORMATS

        if self.quantization_bit not in (None, 4, 8):
            raise ValueError(f"quantization_bit must be 4, 8 or null, got {self.quantization_bit!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be {' or '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.answer_scoring not in ANSWER_SCORINGS:
            raise ValueError(f"answer_scoring must be {', '.join(ANSWER_SCORINGS)}, got {self.answer_scoring!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.model_name_or_path.startswith("builtin:"):
            from .builtin import BUILTIN_MODELS
            from .packaged import PACKAGED_MODELS

            if self.model_name_or_path not in {**BUILTIN_MODELS, **PACKAGED_MODELS}:
                available = ", ".join([*BUILTIN_MODELS, *PACKAGED_MODELS])
                raise ValueError(
                    f"model_name_or_path: unknown built-in model {self.model_name_or_path!r}; available: {available}"
                )
        if self.gguf_file is not None and self.quantization_bit is not None:
            raise ValueError("gguf_file and quantization_bit cannot be combined: a GGUF base loads dequantized")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target or not all(self.lora_target):
            raise ValueError(f"lora_target must name at least one module (or all-linear), got {self.lora_target!r}")


@dataclass
class DataArguments:
    dataset: str = field(default="synthetic", metadata={"help": "Task name (see ivon_lora.tasks)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split reported after training."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet/csv train records (a file or a dir of them)."}
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet/csv eval records (a file or a dir of them)."}
    )
    max_length: int = field(default=320, metadata={"help": "Max prompt tokens (longer prompts lose their middle; the count is reported)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N train records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N eval records."})

    def __post_init__(self):
        _require_at_least("max_length", self.max_length, 1)
        for key in ("max_train_samples", "max_eval_samples"):
            if getattr(self, key) is not None:
                _require_at_least(key, getattr(self, key), 1)


@dataclass
class SFTDataArguments:
    """The data of `objective: sft` (the sequence length is SFTConfig's `max_length`)."""

    dataset: str | None = field(
        default=None,
        metadata={"help": "A built-in SFT dataset (wordqa) or a Hub dataset id (e.g. HuggingFaceH4/ultrachat_200k); "
                          "None with train_file/eval_file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's config name."})
    train_split: str = field(default="train", metadata={"help": "Split to train on (e.g. train_sft)."})
    eval_split: str = field(default="validation", metadata={"help": "Split whose loss and perplexity are reported."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet train rows (messages, prompt/completion or alpaca)."}
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet eval rows (messages, prompt/completion or alpaca)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N train rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N eval rows."})

    def __post_init__(self):
        if self.dataset is None and self.train_file is None:
            raise ValueError("an sft recipe needs dataset (a built-in name or a Hub id) or train_file")
        for key in ("max_train_samples", "max_eval_samples"):
            if getattr(self, key) is not None:
                _require_at_least(key, getattr(self, key), 1)


@dataclass
class RunArguments:
    objective: str = field(
        default="choice",
        metadata={"help": "choice: the K answer letters' cross-entropy (multiple-choice tasks); sft: causal-LM loss on "
                          "instruction/chat data through TRL (needs ivon-lora[sft]; keys: SFTDataArguments, SFTConfig)."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})
    protocol: str = field(
        default="ivon-lora", metadata={"help": "Evaluation protocol preset: ivon-lora or blob (see README)."}
    )
    final_eval_samples: int = field(
        default=10,
        metadata={"help": "Posterior samples S of the evaluation after training (the reported eval_split); the "
                          "Trainer's sampled evaluation during training is ivon_eval_mc_samples. Formerly "
                          "eval_mc_samples."},
    )
    ece_bins: list[int] = field(default_factory=lambda: list(DEFAULT_ECE_BINS), metadata={"help": "ECE bin counts to report."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the evaluation's posterior samples."})
    prior_from: str | None = field(default=None, metadata={
        "help": "Continual finetuning: an IVON run dir (or checkpoint) whose posterior is this run's prior; the adapter "
                "starts at its mean. Same base model and LoRA shape (optim: ivon)."})
    prior_scale: float = field(default=1.0, metadata={
        "help": "Multiplies prior_from's precision: below 1 tempers (widens) the prior, above 1 sharpens it."})
    init_from: str | None = field(default=None, metadata={
        "help": "A run dir (IVON or AdamW) whose adapter this run starts from, with the usual prior (weight_decay)."})

    def __post_init__(self):
        _require_choice("objective", self.objective, OBJECTIVES)
        _require_in("prior_scale", self.prior_scale, 0.0, 1e6, low_inclusive=False)
        if self.prior_from is not None and self.init_from is not None:
            raise ValueError("prior_from and init_from cannot be combined: prior_from already starts at its run's mean")
        _require_at_least("final_eval_samples", self.final_eval_samples, 0)
        for bins in self.ece_bins:
            _require_at_least("ece_bins", bins, 1)


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
        init_keys = {f.name for f in dataclasses.fields(self.training) if f.init}
        resolved.update({k: v for k, v in self.training.to_dict().items() if k in init_keys})
        # to_dict masks every *_token field as "<NAME>": a reloaded recipe would take the mask for the value. Write
        # SFTConfig's eos_token / pad_token as they are, and never a secret (hub_token: from the environment).
        for key in resolved:
            if key.endswith("_token") and key in init_keys:
                resolved[key] = None if key == "hub_token" else getattr(self.training, key)
        return yaml.safe_load(yaml.safe_dump(resolved, default_flow_style=False))  # plain YAML types only


def _accepts(value, annotation) -> tuple[bool, object]:
    """Whether `value` fits `annotation` (after coercing YAML's string spellings of floats such as 3e-2)."""
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            ok, coerced = _accepts(value, option)
            if ok:
                return True, coerced
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if annotation is str:
        return isinstance(value, str), value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return value in {m.value for m in annotation} or isinstance(value, annotation), value
    if origin is list or annotation is list:
        if isinstance(value, str):  # a single item where a list is expected, e.g. lora_target=all-linear
            value = [value]
        if not isinstance(value, list):
            return False, value
        (item_type,) = typing.get_args(annotation) or (typing.Any,)
        items = [_accepts(v, item_type) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict or annotation is dict:
        return isinstance(value, (dict, str)), value
    return True, value  # annotations this checker does not know are left to the dataclass


def _field_types(classes) -> dict[str, tuple[type, typing.Any]]:
    types_by_key = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                types_by_key[f.name] = (cls, hints[f.name])
    return types_by_key


def parse_overrides(overrides: list[str]) -> dict:
    values = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"Override {item!r} is not of the form key=value")
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or "not valid YAML"
            raise RecipeError(f"Override {item!r} on the command line: the value is not valid YAML ({problem}); quote "
                              f"it for a text, e.g. {key.strip()}='\"{text}\"'") from None
    return values


COMMAND_LINE = " on the command line"


def _where(key: str, where: str, command_line) -> str:
    """Where a key's value came from: the command line (an override or flag wins over the file) or `where`."""
    return COMMAND_LINE if key in command_line else where


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str, what: str = "recipe") -> dict:
    """The mapping of a YAML config file; an error naming the file if it is missing or not a mapping."""
    if not os.path.isfile(path):
        raise RecipeError(f"{what.capitalize()} file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(loaded, dict):
        raise RecipeError(f"{path}: a {what} is a mapping of key: value, got {type(loaded).__name__}")
    for key in loaded:
        if not isinstance(key, str):
            raise RecipeError(f"{path}: key {key!r} is not a name: every key of a {what} is a text such as max_steps")
    return loaded


def check_values(values: dict, classes, where: str = "", kind: str = "recipe", help_hint: str = "",
                 command_line=frozenset()) -> dict:  # fmt: skip
    """The pre-pass before HfArgumentParser: every key known (else "did you mean"), every value of its field's
    type (YAML's "1e6" strings coerced to float, a single item to a one-item list). Returns the coerced values.
    `where` names the file; keys in `command_line` came from key=value or flags and are reported as such."""
    types_by_key = _field_types(classes)
    unknown = [key for key in values if key not in types_by_key]
    if unknown:
        messages = []
        for key in unknown:
            close = difflib.get_close_matches(key, types_by_key, n=1)
            messages.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        where = COMMAND_LINE if all(key in command_line for key in unknown) else where
        raise RecipeError(f"Unknown {kind} key(s){where}: {', '.join(messages)}.{help_hint}")
    coerced_values = {}
    for key, value in values.items():
        _, annotation = types_by_key[key]
        ok, coerced = _accepts(value, annotation)
        if not ok:
            raise RecipeError(f"{kind.capitalize()} key {key!r}{_where(key, where, command_line)}: {value!r} is not a "
                              f"valid {_type_name(annotation)}")  # fmt: skip
        coerced_values[key] = coerced
    return coerced_values


def parse_values(values: dict, classes, where: str = "", kind: str = "recipe", command_line=frozenset()) -> tuple:
    """The dataclasses of `classes` from checked `values` (HfArgumentParser.parse_dict); their own validation
    errors (`__post_init__`) become a RecipeError naming the config."""
    # As HfArgumentParser.parse_dict, except that a key two classes share (trust_remote_code of ModelArguments and
    # SFTConfig, say) goes to both: its argparse parser refuses such classes.
    try:
        return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
                     for cls in classes)  # fmt: skip
    except (ValueError, TypeError) as error:
        named = [key for key in command_line if re.search(rf"\b{re.escape(key)}\b", str(error))]
        raise RecipeError(f"Invalid {kind}{COMMAND_LINE if named else where}: {error}") from error


def load_recipe(path: str | None, overrides: list[str] = (), for_training: bool = True) -> Recipe:
    """Read `path` (YAML), apply `overrides` (key=value), validate every key and value, check the files.

    `for_training`: the recipe of a run about to train: its data files must exist, and a non-empty output_dir is
    an error unless overwriting or resuming is asked for. False for the saved recipe of a finished run, which is
    read wherever the run dir now is: its relative data paths may not resolve from here, and nothing reads them.
    Its training keys are checked and parsed when first read (`Recipe.training`): loading a run for inference
    imports neither transformers' TrainingArguments nor TRL.
    """
    where = f" in {path}" if path else ""
    values = _renamed_keys(read_yaml(path) if path is not None else {}, where)
    command_line = _renamed_keys(parse_overrides(list(overrides)), COMMAND_LINE)
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


# Recipe keys renamed: old name -> new name. The old name keeps working, with a FutureWarning naming the new one.
RENAMED_RECIPE_KEYS = {"eval_mc_samples": "final_eval_samples"}


def _renamed_keys(values: dict, where: str) -> dict:
    values = dict(values)
    for old, new in RENAMED_RECIPE_KEYS.items():
        if old not in values:
            continue
        if new in values:
            raise RecipeError(
                f"Recipe keys {old!r} and {new!r}{where}: {old!r} is the old name of {new!r}; keep only {new!r}"
            )
        warnings.warn(f"Recipe key {old!r}{where} is deprecated: rename it {new!r} (same meaning)", FutureWarning,
                      stacklevel=3)  # fmt: skip
        values[new] = values.pop(old)
    return values


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


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _check_names(recipe: Recipe) -> None:
    from .tasks import get_protocol, get_task

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
            raise RecipeError(f"Recipe key {key!r}: task {task.name!r} has no split {split!r} ({', '.join(task.splits)})")


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
        raise RecipeError(f"Recipe key 'model_name_or_path': the local dir {path!r} holds no {' and no '.join(missing)}: "
                          "point it at a saved model (save_pretrained's dir), a Hub id, or a builtin: model")


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
    # Under a multi-process launch only the main process checks and locks: the others would see its first files.
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from .artifacts import check_overwritable, lock_output_dir

    lock_output_dir(output_dir)  # one train per output_dir at a time, held until the command ends
    if recipe.run.overwrite_output_dir and recipe.training.resume_from_checkpoint is None:
        check_overwritable(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not recipe.run.overwrite_output_dir:
        if recipe.training.resume_from_checkpoint is None:
            raise RecipeError(
                f"output_dir {output_dir!r} exists and is not empty: choose another output_dir, "
                "or set overwrite_output_dir=true to write into it, or resume_from_checkpoint=... to resume."
            )


def _check_resume_checkpoint(checkpoint) -> None:
    """A checkpoint to resume from must be a complete checkpoint-N dir of the Trainer (its save finished)."""
    from .artifacts import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

    if checkpoint is None or isinstance(checkpoint, bool):
        return
    if not os.path.isdir(checkpoint):
        raise RecipeError(f"Recipe key 'resume_from_checkpoint': {checkpoint!r} does not exist (a checkpoint-N dir of "
                          "the run's output_dir)")  # fmt: skip
    missing = [name for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "trainer_state.json")
               if not os.path.isfile(os.path.join(checkpoint, name))]  # fmt: skip
    if missing:
        raise RecipeError(f"Recipe key 'resume_from_checkpoint': {checkpoint!r} is not a complete checkpoint "
                          f"({', '.join(missing)} missing; a run killed while saving it?): resume from an earlier one")


def _check_resume_fits(recipe: Recipe) -> None:
    """The checkpoint to resume from holds an adapter of this recipe's shape (LoRA rank): checked before the model
    loads and before output_dir is written, where loading it would fail with a size mismatch."""
    from .artifacts import ADAPTER_CONFIG_NAME, read_json

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

    from .trainer.config import IVONTrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)} - {"optim", "learning_rate"}
    lines = []
    for cls in (*argument_classes("choice"), SFTDataArguments):
        hints = typing.get_type_hints(cls)
        lines.append(f"# {cls.__name__}" + (" (objective: sft, in place of DataArguments)" if cls is SFTDataArguments else ""))
        for f in dataclasses.fields(cls):
            if f.init and not (cls is IVONTrainingArguments and f.name in inherited):
                lines.append(f"  {f.name} ({_type_name(hints[f.name])}): {f.metadata.get('help', '')}")
    lines.append("# ...and every other transformers.TrainingArguments field (output_dir, max_steps, bf16, seed, ...);")
    lines.append("# with objective: sft, every trl.SFTConfig field too (max_length, packing, assistant_only_loss, ...)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# eval, prune, export, inspect and generate: one dataclass each, from a YAML file, key=value overrides and flags.

def _require_at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{key} must be >= {low}, got {value}")


def _require_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _require_in(key: str, value: float, low: float, high: float, low_inclusive: bool = True) -> None:
    if not (low <= value if low_inclusive else low < value) or value > high:
        raise ValueError(f"{key} {value} is not in {'[' if low_inclusive else '('}{low}, {high}]")


@dataclass
class OutputArguments:
    out: str | None = field(default=None, metadata={"help": "output dir (must not exist or be empty)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty out"})


@dataclass
class PruneConfig(OutputArguments):
    run_dir: str | None = field(default=None, metadata={"help": "run or checkpoint dir trained with optim=ivon"})
    fraction: float | None = field(default=None, metadata={"help": "fraction of adapter entries to prune, 0-1"})
    scope: str = field(default="global", metadata={"help": "rank entries globally or per matrix"})
    mode: str = field(default="zero", metadata={"help": "zero: mean and variance 0; denoise: variance 0"})
    criterion: str = field(default="snr", metadata={"help": "|m|/sqrt(v), |m| or 1/sqrt(v)"})
    temperature: float = field(default=1.0, metadata={"help": "also divide the variance by this"})

    def __post_init__(self):
        for key in ("run_dir", "fraction", "out"):
            if getattr(self, key) is None:
                raise ValueError(f"{key} is required")
        _require_in("fraction", self.fraction, 0.0, 1.0)
        _require_in("temperature", self.temperature, 0.0, float("inf"), low_inclusive=False)
        _require_choice("scope", self.scope, PRUNE_SCOPES)
        _require_choice("mode", self.mode, PRUNE_MODES)
        _require_choice("criterion", self.criterion, PRUNE_CRITERIA)


@dataclass
class ExportConfig(OutputArguments):
    run_dir: str | None = field(default=None, metadata={"help": "run, checkpoint or pruned dir"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the base model's own code (see --help)"})

    def __post_init__(self):
        for key in ("run_dir", "out"):
            if getattr(self, key) is None:
                raise ValueError(f"{key} is required")


@dataclass
class EvalConfig(OutputArguments):
    run_dir: str | None = field(default=None, metadata={"help": "run, checkpoint or pruned dir"})
    task: list[str] | None = field(default=None, metadata={
        "help": "task name(s), e.g. arc_challenge mmlu:college_physics (default: the run's dataset)"})
    split: str | None = field(default=None, metadata={
        "help": "reported split (default: the run's eval_split, else the protocol's)"})
    file: str | None = field(default=None, metadata={
        "help": "local json/jsonl/parquet/csv records (file or dir) of the split, one task"})
    protocol: str | None = field(default=None, metadata={
        "help": "protocol preset: ivon-lora or blob (default: the run's recipe)"})
    samples: int | None = field(default=None, metadata={"help": "posterior samples S (default: the protocol's, 10)"})
    batch_size: int = field(default=32, metadata={"help": "examples per forward pass"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N records of each split"})
    seed: int = field(default=0, metadata={"help": "seed of the samples"})
    batched_samples: int = field(default=0, metadata={
        "help": "multiple-choice tasks: score K posterior samples per forward pass, each with its own LoRA delta on "
                "a stacked batch (default 0: one sample per pass)"})
    ece_bins: list[int] = field(default_factory=lambda: list(DEFAULT_ECE_BINS), metadata={"help": "ECE bin counts"})
    baseline: str | None = field(default=None, metadata={"help": "a second run dir (e.g. AdamW) evaluated side by side"})
    mc_dropout_samples: int = field(default=0, metadata={
        "help": "MC-dropout samples for runs without a posterior (default 0: weights only)"})
    decoding: str = field(default="mean", metadata={
        "help": "generative tasks: the chosen answer greedy at the posterior mean (mean) or posterior-averaged "
                "(averaged: each token the argmax of the S samples' mean next-token distribution)"})
    sampling_temperature: float = field(default=1.0, metadata={
        "help": "generative tasks: temperature of the S sampled answers of a run without posterior or MC dropout"})
    prune_fractions: list[float] = field(default_factory=lambda: [0.0], metadata={"help": "pruning fractions, 0-1"})
    temperatures: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "posterior temperatures, > 0"})
    sweep: bool = field(default=False, metadata={"help": "sweep the default pruning fractions"})
    prune_scope: str = field(default="global", metadata={"help": "rank entries globally or per matrix"})
    prune_mode: str = field(default="zero", metadata={"help": "zero: mean and variance 0; denoise: variance 0"})
    prune_criterion: str = field(default="snr", metadata={"help": "|m|/sqrt(v), |m| or 1/sqrt(v)"})
    select_split: str | None = field(default=None, metadata={
        "help": "held-out split a sweep chooses on (never the reported split)"})
    select_file: str | None = field(default=None, metadata={"help": "local records of the select split"})
    select_by: str = field(default=DEFAULT_SELECTION_CRITERION, metadata={
        "help": "criterion of the choice, on the sampled predictive (default nll)"})
    ensemble: list[str] | None = field(default=None, metadata={
        "help": "two or more run dirs (e.g. AdamW runs of different seeds) evaluated as a deep ensemble"})
    temperature_scaling: bool = field(default=False, metadata={
        "help": "add each run temperature-scaled: one T fitted by NLL on select_split"})
    risk_averse: bool = field(default=False, metadata={
        "help": "add the risk-averse selector (mean - kappa * std of the chosen answer's sample probabilities) to "
                "posterior runs' selective prediction, kappa chosen on select_split"})
    lm_eval_tasks: list[str] | None = field(default=None, metadata={
        "help": "instead of task: lm-evaluation-harness multiple-choice tasks (a list, or comma-separated as lm-eval "
                "takes them), scored by lm-eval; needs ivon-lora[lm-eval]"})
    lm_eval_include_path: str | None = field(default=None, metadata={
        "help": "a dir of local lm-eval task YAMLs (lm-eval's --include_path)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the base model's own code (see --help)"})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("run_dir is required")
        _require_at_least("batch_size", self.batch_size, 1)
        _require_at_least("mc_dropout_samples", self.mc_dropout_samples, 0)
        _require_at_least("batched_samples", self.batched_samples, 0)
        _require_in("sampling_temperature", self.sampling_temperature, 0.0, float("inf"), low_inclusive=False)
        _require_choice("decoding", self.decoding, DECODING_MODES)
        for key in ("samples", "limit"):
            if getattr(self, key) is not None:
                _require_at_least(key, getattr(self, key), 0 if key == "samples" else 1)
        for bins in self.ece_bins:
            _require_at_least("ece_bins", bins, 1)
        if self.lm_eval_tasks is not None:
            self.lm_eval_tasks = [name.strip() for item in self.lm_eval_tasks for name in item.split(",") if name.strip()]
            if not self.lm_eval_tasks:
                raise ValueError("lm_eval_tasks names no task: pass e.g. arc_easy,hellaswag")
        if self.sweep:
            self.prune_fractions = list(DEFAULT_PRUNE_FRACTIONS)
        for fraction in self.prune_fractions:
            _require_in("prune_fractions", fraction, 0.0, 1.0)
        for temperature in self.temperatures:
            _require_in("temperatures", temperature, 0.0, float("inf"), low_inclusive=False)
        _require_choice("prune_scope", self.prune_scope, PRUNE_SCOPES)
        _require_choice("prune_mode", self.prune_mode, PRUNE_MODES)
        _require_choice("prune_criterion", self.prune_criterion, PRUNE_CRITERIA)
        _require_choice("select_by", self.select_by, list(selection_criteria()))
        if self.ensemble is not None and len(self.ensemble) < 2:
            raise ValueError("ensemble needs at least 2 run dirs")

    @property
    def sweeping(self) -> bool:
        # A select_split alone asks for a (one-configuration) sweep, unless it is temperature scaling's split.
        several = len(self.prune_fractions) * len(self.temperatures) > 1
        return several or (self.select_split is not None and not self.temperature_scaling and not self.risk_averse)


@dataclass
class InspectConfig(OutputArguments):
    run_dir: str | None = field(default=None, metadata={"help": "run, checkpoint or pruned dir trained with optim=ivon"})
    predictions: str | None = field(default=None, metadata={
        "help": "per-example predictions jsonl (default: the run dir's predictions.jsonl)"})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("run_dir is required")


@dataclass
class GenerateConfig:
    """The options of `ivon-lora generate` (from a YAML file, key=value and flags, like eval's)."""

    run_dir: str | None = field(default=None, metadata={"help": "run or checkpoint dir"})
    prompt: list[str] | None = field(default=None, metadata={"help": "prompt texts"})
    prompts_file: str | None = field(default=None, metadata={
        "help": ".jsonl with a 'prompt' or 'messages' per line, or a text file with one prompt per line"})
    samples: int = field(default=0, metadata={"help": "posterior samples S (default 0: the mean's answer only)"})
    seed: int = field(default=0, metadata={"help": "seed of the posterior samples"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens generated per answer at most"})
    batch_size: int = field(default=8, metadata={"help": "prompts decoded together"})
    system: str | None = field(default=None, metadata={"help": "system message (needs a chat template)"})
    no_chat: bool = field(default=False, metadata={"help": "plain prompts even if the tokenizer has a chat template"})
    out: str | None = field(default=None, metadata={"help": "jsonl file of the answers (must not exist)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing out file"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the base model's own code (see --help)"})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("run_dir is required")
        for key, low in (("samples", 0), ("max_new_tokens", 1), ("batch_size", 1)):
            _require_at_least(key, getattr(self, key), low)


@dataclass
class SensitivityConfig(OutputArguments):
    """The options of `ivon-lora sensitivity` (from a YAML file, key=value and flags, like eval's)."""

    run_dir: str | None = field(default=None, metadata={"help": "IVON run or checkpoint dir (multiple choice)"})
    split: str = field(default="train", metadata={"help": "split of the run's task to score (default train)"})
    file: str | None = field(default=None, metadata={"help": "local json/jsonl/parquet/csv records of the split"})
    task: str | None = field(default=None, metadata={"help": "task name (default: the run's dataset)"})
    variance: str = field(default="exact", metadata={
        "help": "exact: diag(J Σ Jᵀ) by K backward passes per batch; sampled: sample variance over S posterior samples"})
    samples: int = field(default=10, metadata={"help": "posterior samples S of the sampled variance (>= 2)"})
    ess: float | None = field(default=None, metadata={
        "help": "rescale the posterior to this ess (e.g. the train set size N) for LOO estimates; default: the run's"})
    top: int = field(default=20, metadata={"help": "most sensitive examples printed"})
    batch_size: int = field(default=16, metadata={"help": "examples per forward pass"})
    limit: int | None = field(default=None, metadata={"help": "score only the first N records"})
    seed: int = field(default=0, metadata={"help": "seed of the posterior samples (sampled)"})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("run_dir is required")
        _require_choice("variance", self.variance, ("exact", "sampled"))
        _require_at_least("samples", self.samples, 2)
        _require_at_least("top", self.top, 0)
        _require_at_least("batch_size", self.batch_size, 1)
        if self.limit is not None:
            _require_at_least("limit", self.limit, 1)
        if self.ess is not None:
            _require_in("ess", self.ess, 0.0, float("inf"), low_inclusive=False)


def load_command_config(cls, command: str, path: str | None, overrides: list[str] = (), flags: dict | None = None):
    """`cls` (EvalConfig, PruneConfig, ExportConfig, InspectConfig, GenerateConfig, SensitivityConfig, ...) from a YAML file, then key=value overrides, then flags."""
    values = read_yaml(path, "config") if path is not None else {}
    command_line = {**parse_overrides(list(overrides)), **(flags or {})}
    values.update(command_line)
    where = f" in {path}" if path else ""
    values = check_values(values, (cls,), where, kind="config", command_line=command_line,
                          help_hint=f" `ivon-lora {command} --help` lists the keys (flags with - as _).")  # fmt: skip
    (config,) = parse_values(values, (cls,), where, kind="config", command_line=command_line)
    return config


@dataclass
class MergeConfig(OutputArguments):
    run_dirs: list[str] | None = field(default=None, metadata={"help": "two or more run dirs to merge"})
    method: list[str] | None = field(default=None, metadata={
        "help": "uncertainty, posterior, or a PEFT combination type (linear, cat, svd, ties, dare_ties, ...); several "
                "with sweep"})
    weights: list[float] | None = field(default=None, metadata={"help": "one weight α per run (default 1/N each)"})
    space: str = field(default="delta", metadata={
        "help": "uncertainty / posterior: merge each ΔW = B·A (delta) or A and B separately (factor)"})
    density: float | None = field(default=None, metadata={"help": "fraction kept by ties / dare / magnitude_prune"})
    rank: int | None = field(default=None, metadata={
        "help": "rank of the merged adapter (delta space and *_svd; default the sum / PEFT's max of the input ranks)"})
    base_precision: float = field(default=0.0, metadata={
        "help": "uncertainty: H₀ as a multiple of the inputs' mean precision per matrix (0: precision-weighted "
                "average; large: task arithmetic)"})
    seed: int = field(default=0, metadata={"help": "seed of DARE's random drops"})
    sweep: bool = field(default=False, metadata={"help": "merge at many weights and evaluate each on every input's task"})
    sweep_values: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0], metadata={
        "help": "sweep, two runs: the grid of each run's weight"})
    sweep_steps: int = field(default=4, metadata={"help": "sweep, three or more runs: simplex lattice step 1/N"})
    split: str = field(default="validation", metadata={"help": "sweep: the split each task is scored on"})
    limit: int | None = field(default=None, metadata={"help": "sweep: score only the first N records of each split"})
    references: list[str] | None = field(default=None, metadata={
        "help": "sweep: run dirs scored as reference points (e.g. multitask finetunes)"})
    batch_size: int = field(default=32, metadata={"help": "sweep: examples per forward pass"})

    def __post_init__(self):
        if not self.run_dirs or len(self.run_dirs) < 2:
            raise ValueError("two or more run dirs are required")
        if not self.method:
            raise ValueError("method is required")
        if len(self.method) > 1 and not self.sweep:
            raise ValueError("several methods need sweep (one merged dir has one method)")
        if not self.sweep and self.out is None:
            raise ValueError("out is required")
        if self.density is not None:
            _require_in("density", self.density, 0.0, 1.0, low_inclusive=False)
        if self.rank is not None:
            _require_at_least("rank", self.rank, 1)
        _require_at_least("sweep_steps", self.sweep_steps, 1)
        if self.base_precision < 0:
            raise ValueError(f"base_precision must be >= 0, got {self.base_precision}")
