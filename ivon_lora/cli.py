"""`ivon-lora` command line: each command is a parser builder plus a `main`; this module only dispatches."""

from __future__ import annotations

import argparse
import logging
import sys


def _add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Finetune a LoRA adapter with IVON (or a baseline optimizer) from a YAML recipe.",
        description="Train from RECIPE (YAML); key=value arguments override recipe keys.",
    )
    parser.add_argument("recipe", nargs="?", help="YAML recipe file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe key overrides")
    parser.add_argument("--help-keys", action="store_true", help="list every recipe key and exit")
    parser.set_defaults(main=train_main)


def train_main(options) -> int:
    from .recipe import describe_keys, load_recipe

    if options.help_keys:
        print(describe_keys())
        return 0
    if options.recipe is None:
        raise SystemExit("ivon-lora train: a RECIPE.yaml is required (see recipes/demo.yaml)")
    recipe = load_recipe(options.recipe, options.overrides)
    from .train import run_train

    run_train(recipe)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivon-lora", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(subparsers)
    return parser


def main(argv=None) -> int:
    from .recipe import RecipeError
    from .tasks import RecordError

    options = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        return options.main(options)
    except (RecipeError, RecordError) as error:
        print(f"ivon-lora {options.command}: {error}", file=sys.stderr)
        return 2
