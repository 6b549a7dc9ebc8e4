"""`ivon-lora lm-eval ...`: lm-evaluation-harness's own command line with the `ivon-lora` model registered.

Every argument goes to lm-eval unchanged (`--model ivon-lora --model_args run=RUN,samples=10 --tasks ...`, and
`-h` too): lm-eval 0.4.x discovers no third-party models by itself, so this command imports the backend
(`ivon_lora.integrations.lm_eval`, which registers the name) and then runs `lm_eval.__main__.cli_evaluate`.
"""

from __future__ import annotations

import argparse


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lm-eval",
        # No option of its own: with "+" as the only prefix character, every "-x" / "--xx" argument is a plain
        # string that the positional below collects unchanged (argparse.REMAINDER alone would refuse a first
        # argument that looks like an option). -h therefore goes on to lm-eval.
        prefix_chars="+",
        add_help=False,
        help="lm-evaluation-harness's command line with --model ivon-lora registered (needs ivon-lora[lm-eval]).",
        description="ivon-lora lm-eval --model ivon-lora --model_args run=RUN,samples=10 --tasks arc_easy ...: every "
                    "argument goes to lm-eval unchanged.",
    )  # fmt: skip
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="LM_EVAL_ARGUMENTS")
    return parser


def config_from(options: argparse.Namespace) -> list[str]:
    """lm-eval's arguments: its own command line parses and checks them."""
    return list(options.lm_eval_args)


def main(config: list[str]) -> int:
    from ..integrations.lm_eval import main as lm_eval_main

    lm_eval_main(config)
    return 0
