"""What the parsers of eval, prune, export, inspect, generate, sensitivity and merge share: their RUN_DIR /
CONFIG.yaml / key=value positionals (`add_config_arguments`), the flags of their config dataclass's fields
(`add_field_arguments`); and turning parsed options into the command's typed config
(`config_from_options`, `ivon_lora.config`).

A flag's help, default, choices and bounds are written once, in its field's metadata: `help`, and optionally
`choices`, `bounds` (an `ivon_lora.validation.Bounds`, stated in the help and checked by the config with the values
of a YAML file), `metavar`, `flag` (its name, if not --name-with-dashes), `action`
(`append`: a list given one value per flag, the flag repeated), `positional` (the field that the RUN_DIR
positionals fill, with this metavar; no flag), `cli: False` (no flag) and `formerly` (the field's former name: its
flag still works, with a FutureWarning naming the new one). The default shown in --help is the
field's. Flags have no argparse defaults (the config dataclass holds them, once): a flag that is not given does not
override the YAML config's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing


def positional_field(config_class) -> dataclasses.Field:
    """The field of `config_class` that the positionals which are neither a YAML file nor key=value fill."""
    (found,) = [f for f in dataclasses.fields(config_class) if "positional" in f.metadata]
    return found


def add_config_arguments(parser: argparse.ArgumentParser, config_class) -> None:
    field = positional_field(config_class)
    name = field.metadata["positional"]
    parser.add_argument(
        "inputs", nargs="*", default=[], metavar=f"{name} | CONFIG.yaml | key=value",
        help=f"{name}: {field.metadata['help']}; CONFIG.yaml: a YAML mapping of the options below (flag names with _ "
             "for -); key=value: one option, overriding the config",
    )  # fmt: skip


def config_from_options(options: argparse.Namespace, config_class, command: str):
    """The command's config: the YAML file among the positionals, then key=value positionals, then the flags given.
    The other positionals fill `config_class`'s positional field: one run dir, or for a list field each of them."""
    from ..config import load_command_config
    from ..errors import RecipeError

    field = positional_field(config_class)
    is_list = _item_type(typing.get_type_hints(config_class)[field.name])[1]
    path, overrides, positionals = None, [], []
    for item in options.inputs:
        if "=" in item and not os.path.exists(item):  # an argument naming an existing path is that path
            overrides.append(item)
        elif item.endswith((".yaml", ".yml")):
            if path is not None:
                raise RecipeError(f"Two config files given: {path!r} and {item!r}")
            path = item
        elif positionals and not is_list:
            raise RecipeError(f"Two run dirs given: {positionals[0]!r} and {item!r}")
        else:
            positionals.append(item)
    flags = {field.name: positionals if is_list else positionals[0]} if positionals else {}
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


def flag_help(field: dataclasses.Field) -> str:
    """A field's help with its bounds (from its metadata, as the config checks them) and its default appended, unless
    the help already says what the default is: "examples per forward pass (>= 1; default 32)"."""
    help_text = field.metadata.get("help", "")
    default = _default_text(field)
    notes = [str(field.metadata["bounds"])] if "bounds" in field.metadata else []
    notes += [f"default {default}"] if default is not None and "default" not in help_text else []
    return f"{help_text} ({'; '.join(notes)})" if notes else help_text


def _item_type(annotation):
    """(the element type, whether it is a list) of an Optional / list annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def flag_fields(config_class, skip=()) -> list[dataclasses.Field]:
    """The fields that get a flag, the class's own first, then the inherited ones (out, overwrite)."""
    inherited = {f.name for base in config_class.__mro__[1:] if dataclasses.is_dataclass(base)
                 for f in dataclasses.fields(base)}  # fmt: skip
    fields = [f for f in dataclasses.fields(config_class) if f.init and f.name not in skip
              and "positional" not in f.metadata and f.metadata.get("cli") is not False]  # fmt: skip
    return sorted(fields, key=lambda f: f.name in inherited)  # stable: each group keeps the class's order


def add_field_arguments(parser: argparse.ArgumentParser, config_class, skip=()) -> None:
    """One flag per field of `config_class` (`--name-with-dashes`), from its metadata; `skip`: fields set otherwise.
    A bool field is a switch; a list field takes one or more values (with `action: append`, one per flag)."""
    hints = typing.get_type_hints(config_class)
    for field in flag_fields(config_class, skip):
        metadata = field.metadata
        flag = metadata.get("flag", "--" + field.name.replace("_", "-"))
        item, is_list = _item_type(hints[field.name])
        if item is bool:
            parser.add_argument(flag, dest=field.name, action="store_true", default=argparse.SUPPRESS,
                                help=flag_help(field))  # fmt: skip
            continue
        # A number's bounds are the config's to check (one message, one line, as for a YAML value), not argparse's.
        options = {"dest": field.name, "help": flag_help(field)}
        if item in (int, float):
            options["type"] = item
        if "choices" in metadata:
            options["choices"] = list(metadata["choices"])
        if "metavar" in metadata:
            options["metavar"] = metadata["metavar"]
        if "action" in metadata:
            options["action"] = metadata["action"]
        elif is_list:
            options["nargs"] = "+"
        parser.add_argument(flag, **options)
        if "formerly" in metadata:  # the config renames it (load_command_config), warning
            parser.add_argument("--" + metadata["formerly"].replace("_", "-"), **{**options, "dest": metadata["formerly"],
                                "help": f"deprecated: the former name of {flag}"})  # fmt: skip


def build_parser(subparsers, command: str, config_class, **texts) -> argparse.ArgumentParser:
    """`command`'s parser: its positionals and one flag per field of `config_class`; `texts`: help, description."""
    parser = subparsers.add_parser(command, **texts)
    add_config_arguments(parser, config_class)
    add_field_arguments(parser, config_class)
    return parser
