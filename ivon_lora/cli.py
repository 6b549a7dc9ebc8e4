"""`ivon-lora` command line: each command (`ivon_lora.commands`) is a parser builder, a typed config and a `main`;
this module only dispatches."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from .commands import COMMANDS, module_name
from .errors import USER_ERRORS


def _command(name: str):
    return import_module(f".commands.{module_name(name)}", __package__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivon-lora", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        _command(name).make_parser(subparsers)
    return parser


def main(argv=None) -> int:
    options = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    command = _command(options.command)
    try:
        config = command.config_from(options)
        return 0 if config is None else command.main(config)
    except USER_ERRORS as error:
        print(f"ivon-lora {options.command}: {error}", file=sys.stderr)
        return 2
