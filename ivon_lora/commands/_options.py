"""What the parsers of eval, prune and export share: CONFIG.yaml / RUN_DIR / key=value positionals, the output
options, bounded numbers; and turning parsed options into the command's typed config (`ivon_lora.config`).

Flags have no argparse defaults (the config dataclass holds them, once): a flag that is not given does not
override the YAML config's value.
"""

from __future__ import annotations

import argparse
import os


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

