"""What the parsers of eval, prune, export, inspect and generate share: CONFIG.yaml / RUN_DIR / key=value
positionals, the flags of a config dataclass's fields (`add_field_arguments`), bounded numbers; and turning parsed
options into the command's typed config (`ivon_lora.config`).

A flag's help, default, choices and bounds are written once, in its field's metadata (`help`, and optionally
`choices`, `bounds` (low, high, low_inclusive), `metavar`, `flag`, `cli: False`); the default shown in --help is
the field's. Flags have no argparse defaults (the config dataclass holds them, once): a flag that is not given does
not override the YAML config's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing


def add_config_arguments(parser: argparse.ArgumentParser, positional: str, help_text: str) -> None:
    parser.add_argument(
        "inputs", nargs="*", default=[], metavar=f"{positional} | CONFIG.yaml | key=value",
        help=f"{positional}: {help_text}; CONFIG.yaml: a YAML mapping of the options below (flag names with _ "
             "for -); key=value: one option, overriding the config",
    )  # fmt: skip


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output dir (must not exist or be empty)")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS, help="replace a non-empty --out")


TRUST_REMOTE_CODE_HELP = ("run the run's base model's own code, which its recipe's trust_remote_code: true asks for "
                          "(a run dir's setting alone is never enough: only for runs whose code you trust)")


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true", default=argparse.SUPPRESS,
                        help=TRUST_REMOTE_CODE_HELP)  # fmt: skip


def number_in(low: float, high: float, low_inclusive: bool = True):
    def parse(text: str) -> float:
        value = float(text)
        if not (low <= value if low_inclusive else low < value) or value > high:
            raise argparse.ArgumentTypeError(f"{value} is not in {'[' if low_inclusive else '('}{low}, {high}]")
        return value

    return parse


def config_from_options(options: argparse.Namespace, config_class, command: str):
    """The command's config: the YAML file among the positionals, then key=value positionals, then the flags given."""
    from ..config import load_command_config
    from ..errors import RecipeError

    path, overrides, flags = None, [], {}
    for item in options.inputs:
        if "=" in item and not os.path.exists(item):  # an argument naming an existing path is that path
            overrides.append(item)
        elif item.endswith((".yaml", ".yml")):
            if path is not None:
                raise RecipeError(f"Two config files given: {path!r} and {item!r}")
            path = item
        elif "run_dir" in flags:
            raise RecipeError(f"Two run dirs given: {flags['run_dir']!r} and {item!r}")
        else:
            flags["run_dir"] = item
    flags.update({key: value for key, value in vars(options).items()
                  if key not in ("inputs", "command", "debug") and value is not None})  # fmt: skip
    return load_command_config(config_class, command, path, overrides, flags)



def _default_text(field: dataclasses.Field) -> str | None:
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        default = field.default
    else:
        return None
    if default is None or default is False:
        return None
    return " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


def _item_type(annotation):
    """(the element type, whether it is a list) of an Optional / list annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_field_arguments(parser: argparse.ArgumentParser, config_class, skip=()) -> None:
    """One flag per field of `config_class` (`--name-with-dashes`), from its metadata; `skip`: fields set otherwise
    (positionals). A bool field is a switch; a list field takes one or more values."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        metadata = field.metadata
        if field.name in skip or not field.init or metadata.get("cli") is False:
            continue
        flag = metadata.get("flag", "--" + field.name.replace("_", "-"))
        help_text = metadata.get("help", "")
        default = _default_text(field)
        if default is not None and "default" not in help_text:
            help_text += f" (default {default})"
        item, is_list = _item_type(hints[field.name])
        if item is bool:
            parser.add_argument(flag, dest=field.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        options = {"dest": field.name, "help": help_text}
        if "bounds" in metadata:
            options["type"] = number_in(*metadata["bounds"])
        elif item in (int, float):
            options["type"] = item
        if "choices" in metadata:
            options["choices"] = list(metadata["choices"])
        if "metavar" in metadata:
            options["metavar"] = metadata["metavar"]
        if is_list:
            options["nargs"] = "+"
        parser.add_argument(flag, **options)
