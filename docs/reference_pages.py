"""The command-line and recipe reference pages, generated from the code that parses them.

`cli_page()` renders every `ivon-lora` command's parser (`ivon_lora.cli.build_parser`, whose flags are built from
the config dataclasses' field metadata: help, choices, bounds, default); `recipe_page()` renders every recipe key
from the recipe's argument dataclasses (their field metadata, bounds and choices included, is what `--help-keys`
prints and what the recipe is checked against, `ivon_lora.validation.check_fields`). `docs/hooks.py` writes both into the site at build time, and `tests/test_docs.py` checks that every
flag and key is on them, so the pages cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

INTRO_CLI = """# Command line

Generated from the parsers of `ivon-lora` (`ivon_lora.cli.build_parser`) when the site is built: each command's
flags come from its config dataclass's field metadata (`ivon_lora.config`), the same metadata that builds
the parser, so this page lists exactly what the installed version accepts. `ivon-lora COMMAND --help` prints the
same. Every command but `train`, `lm-eval` and `compare` (whose positionals are recipes) also reads its options
from a YAML file whose keys are the flag names with `_` for `-` (`ivon-lora prune CONFIG.yaml key=value ...`);
flags given on the command line win. See
[CLI and recipes](../guides/cli-recipes.md) for how they fit together.
"""

INTRO_RECIPE = """# Recipe keys

Generated from the recipe's argument dataclasses (`ivon_lora.config.arguments`, `IVONTrainingArguments`) when the
site is built; `ivon-lora train --help-keys` prints the same list. A recipe is a flat YAML mapping of these keys plus
any [`transformers.TrainingArguments`](https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments)
field (`output_dir`, `max_steps`, `per_device_train_batch_size`, `bf16`, `seed`, ...); with `objective: sft`, the
data keys are `SFTDataArguments`' instead of `DataArguments`', and every
[`trl.SFTConfig`](https://huggingface.co/docs/trl/sft_trainer#trl.SFTConfig) field is accepted too (`max_length`,
`packing`, `assistant_only_loss`, ...). An unknown key is an error with a "did you mean"; see
[CLI and recipes](../guides/cli-recipes.md).
"""


def _cell(text) -> str:
    """Text fit for one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every `ivon-lora` command's parser, by name, in the CLI's order."""
    from ivon_lora.cli import build_parser

    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action) if action.help else ""


def _values(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "switch"
    if action.choices is not None:
        return " \\| ".join(f"`{choice}`" for choice in action.choices)
    if action.metavar:
        name = action.metavar
    elif isinstance(action.type, type):
        name = action.type.__name__
    else:  # no type: a text (a number is an int or a float; its bounds are stated in its help)
        name = "text" if action.type is None else "number"
    return f"`{name}`" + (" ..." if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction) else "")


def _positional(action: argparse.Action) -> str:
    """A positional's name, its alternatives (RUN_DIR | CONFIG.yaml | key=value) each in code."""
    return " \\| ".join(f"`{name}`" for name in (action.metavar or action.dest).split(" | "))


def cli_page() -> str:
    lines = [INTRO_CLI]
    for name, parser in commands().items():
        lines += [f"## `ivon-lora {name}`", "", _cell(parser.description or ""), ""]
        positionals = [a for a in parser._actions if not a.option_strings]
        flags = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        if positionals:
            lines += ["| positional | help |", "|---|---|"]
            lines += [f"| {_positional(a)} | {_cell(_help(parser, a))} |" for a in positionals]
            lines.append("")
        if flags:
            lines += ["| flag | value | help |", "|---|---|---|"]
            lines += [f"| {', '.join(f'`{o}`' for o in a.option_strings)} | {_values(a)} | {_cell(_help(parser, a))} |"
                      for a in flags]  # fmt: skip
            lines.append("")
    return "\n".join(lines)


def recipe_classes() -> list[tuple[type, set[str]]]:
    """(class, the names of its fields that are not recipe keys of its own) for each class a recipe's keys come from:
    the model, data (choice and sft) and run arguments, and what `IVONTrainingArguments` adds to TrainingArguments."""
    from transformers import TrainingArguments

    from ivon_lora.config import SFTDataArguments, argument_classes
    from ivon_lora.trainer import IVONTrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)} - {"optim", "learning_rate"}
    classes = [(cls, set()) for cls in argument_classes("choice") if cls is not IVONTrainingArguments]
    return [*classes, (SFTDataArguments, set()), (IVONTrainingArguments, inherited)]


def _default(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    if field.default is dataclasses.MISSING:
        return "required"
    return f"`{field.default!r}`"


def recipe_keys() -> list[tuple[type, dataclasses.Field, typing.Any]]:
    """Every recipe key the page documents: (class, field, annotation); former names are listed apart."""
    from ivon_lora.config import RENAMED_RECIPE_KEYS

    keys = []
    for cls, skip in recipe_classes():
        hints = typing.get_type_hints(cls)
        keys += [(cls, f, hints[f.name]) for f in dataclasses.fields(cls)
                 if f.init and f.name not in skip and f.name not in RENAMED_RECIPE_KEYS]  # fmt: skip
    return keys


def recipe_page() -> str:
    from ivon_lora.config import RENAMED_RECIPE_KEYS
    from ivon_lora.config.parsing import _type_name
    from ivon_lora.validation import requirement

    titles = {"SFTDataArguments": "SFTDataArguments (with `objective: sft`, in place of DataArguments)",
              "IVONTrainingArguments": "IVONTrainingArguments (what IVON adds to TrainingArguments)"}  # fmt: skip
    lines, current = [INTRO_RECIPE], None
    for cls, field, annotation in recipe_keys():
        if cls is not current:
            current = cls
            lines += ["", f"## {titles.get(cls.__name__, cls.__name__)}", "", "| key | type | default | help |"]
            lines.append("|---|---|---|---|")
        must = requirement(field)  # the bounds or choices the recipe is checked against, from the same metadata
        help_text = _cell(field.metadata.get("help", "") + (f" Must be {must}." if must else ""))
        kind = _type_name(annotation).replace(" | ", " or ")
        lines.append(f"| `{field.name}` | `{kind}` | {_cell(_default(field))} | {help_text} |")
    if RENAMED_RECIPE_KEYS:
        lines += ["", "## Renamed keys", "", "Still accepted, with a deprecation warning naming the new key.", ""]
        lines += ["| old key | new key |", "|---|---|"]
        lines += [f"| `{old}` | `{new}` |" for old, new in RENAMED_RECIPE_KEYS.items()]
    return "\n".join(lines) + "\n"
