"""Typed configs of every command: a flat YAML mapping (plus key=value overrides) -> argument dataclasses.

`ivon-lora train` reads a recipe (`ModelArguments`, `DataArguments`, `RunArguments`, `IVONTrainingArguments`);
eval, prune, export, inspect, generate, sensitivity and merge read `EvalConfig`, `PruneConfig`, `ExportConfig`,
`InspectConfig`, `GenerateConfig`, `SensitivityConfig`, `MergeConfig` the same way, from a YAML file, key=value
overrides and their flags. A small pre-pass (`check_values`) reports unknown keys with a "did you mean" and wrong
types naming the key, and accepts YAML's string spellings of floats (`1e6`); the dataclasses are then built from the
checked values. Everything a config can get wrong (unknown key, wrong type, missing file, an output_dir holding a
previous result) is reported here, naming the key, before any model or data loads.

One module per concern:
- `parsing`: YAML files, key=value overrides and renamed keys, the did-you-mean and type pre-pass;
- `arguments`: the recipe's model, data and run argument classes;
- `recipe`: `Recipe`, `load_recipe` and its checks (names, files, local model dir, resuming), `describe_keys`;
- `commands`, `evaluation`, `posterior_commands`, `compare`: the configs of the commands other than train, one module
  per command family, whose field metadata their parsers are built from (bounds and choices included, checked by
  `ivon_lora.validation.check_fields`).

The vocabularies the values are checked against live in the leaf `ivon_lora.vocabulary`, and the training
arguments (transformers' TrainingArguments) are imported only to build them: this package imports neither the
evaluation nor the trainer code at import time, and a saved run's recipe parses its training keys only when read.
"""

from ..errors import RecipeError
from .arguments import DataArguments, ModelArguments, RunArguments, SFTDataArguments
from .commands import ExportConfig, GenerateConfig, MergeConfig, OutputArguments, load_command_config
from .compare import CompareConfig
from .evaluation import EvalConfig
from .parsing import COMMAND_LINE, check_values, parse_overrides, parse_values, read_yaml
from .posterior_commands import InspectConfig, PruneConfig, RefineConfig, SensitivityConfig
from .recipe import (
    RENAMED_RECIPE_KEYS,
    WEIGHT_SUFFIXES,
    Recipe,
    argument_classes,
    check_local_model_dir,
    describe_keys,
    load_recipe,
)

__all__ = [
    "COMMAND_LINE", "RENAMED_RECIPE_KEYS", "WEIGHT_SUFFIXES", "DataArguments", "EvalConfig", "ExportConfig",
    "GenerateConfig", "InspectConfig", "MergeConfig", "ModelArguments", "OutputArguments", "PruneConfig", "Recipe",
    "RecipeError", "RefineConfig", "RunArguments", "SFTDataArguments", "SensitivityConfig", "argument_classes",
    "check_local_model_dir", "check_values", "describe_keys", "load_command_config", "load_recipe", "parse_overrides",
    "parse_values", "read_yaml",
]  # fmt: skip
