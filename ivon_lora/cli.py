"""`ivon-lora` command line: each command (`ivon_lora.commands`) is a parser builder, a typed config and a `main`;
this module only dispatches, and holds the error contract: a user error (`ivon_lora.errors.USER_ERRORS`) exits 2
with one line and no traceback (`--debug` or IVON_LORA_DEBUG=1 adds it); anything else is a bug: exit 1 with the
traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from importlib import import_module

from .commands import COMMANDS, module_name
from .output_dir import release_output_dir
from .errors import USER_ERRORS
from .model_card import record_invocation


DEBUG_ENV = "IVON_LORA_DEBUG"


def _command(name: str):
    return import_module(f".commands.{module_name(name)}", __package__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivon-lora", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of user errors too (or {DEBUG_ENV}=1)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        _command(name).make_parser(subparsers)
    return parser


def main(argv=None) -> int:
    options = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    command = _command(options.command)
    record_invocation(sys.argv[1:] if argv is None else argv)  # the command line the model cards quote
    try:
        config = command.config_from(options)
        return 0 if config is None else command.main(config)
    except USER_ERRORS as error:
        if options.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        message = " ".join(str(error).split())  # one line, whatever the message held
        print(f"ivon-lora {options.command}: {message}", file=sys.stderr)
        return 2
    finally:
        release_output_dir()  # the output dirs this command claimed (the process's exit would release them too)
