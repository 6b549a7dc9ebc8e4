"""The pre-pass every config goes through: a YAML file (`read_yaml`, refusing a key given twice), key=value overrides
(`parse_overrides`), every key known (else "did you mean") and every value of its field's type (`check_values`,
accepting YAML's string spellings of floats such as `1e6`), then the dataclasses built from the checked values
(`parse_values`), their own validation errors naming the config (their bounds and choices are field metadata,
checked by `ivon_lora.validation.check_fields`). Imports no other part of the package but the leaves.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import types
import typing
import warnings

import yaml

from ..errors import RecipeError


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
            values[key.strip()] = yaml.load(text, Loader=_Yaml12Loader) if text.strip() else None
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or "not valid YAML"
            raise RecipeError(
                f"Override {item!r} on the command line: the value is not valid YAML ({problem}); quote "
                f"it for a text, e.g. {key.strip()}='\"{text}\"'"
            ) from None
    return values


COMMAND_LINE = " on the command line"


def _where(key: str, where: str, command_line) -> str:
    """Where a key's value came from: the command line (an override or flag wins over the file) or `where`."""
    return COMMAND_LINE if key in command_line else where


class _Yaml12Loader(yaml.SafeLoader):
    """safe_load with YAML 1.2's booleans: only true / false. PyYAML follows YAML 1.1, where yes, no, on and off are
    booleans too, so `save_strategy: no` (a TrainingArguments value) would arrive as False."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _UniqueKeyLoader(_Yaml12Loader):
    """The YAML 1.2 loader that refuses a key given twice in one mapping (PyYAML keeps the last one, silently)."""

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


def renamed_keys(classes) -> dict[str, str]:
    """Former key -> key, from the fields' `formerly` metadata (a field renamed keeps its former name there)."""
    return {
        f.metadata["formerly"]: f.name for cls in classes for f in dataclasses.fields(cls) if "formerly" in f.metadata
    }


def rename_keys(values: dict, renamed: dict[str, str], where: str = "", kind: str = "recipe",
                command_line=frozenset()) -> dict:  # fmt: skip
    """`values` with each former key of `renamed` under its new name, with a FutureWarning naming the new one (as
    TRL's renamed arguments); a key given under both names is an error. Keys in `command_line` are reported as such."""
    values = dict(values)
    for old, new in renamed.items():
        if old not in values:
            continue
        place = _where(old, where, command_line)
        if new in values:
            raise RecipeError(f"{kind.capitalize()} keys {old!r} and {new!r}{place}: {old!r} is the former name of "
                              f"{new!r}; keep only {new!r}")  # fmt: skip
        flag = f" (flag --{new.replace('_', '-')})" if kind == "config" else ""
        warnings.warn(f"{kind.capitalize()} key {old!r}{place} is deprecated: rename it {new!r}{flag} (same meaning)",
                      FutureWarning, stacklevel=3)  # fmt: skip
        values[new] = values.pop(old)
    return values


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


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
