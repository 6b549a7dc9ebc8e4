"""One module per command of `ivon-lora`; each has `make_parser(subparsers)`, `config_from(options)` (the typed
config: a recipe for train, an `ivon_lora.config` dataclass for the others; lm-eval's own arguments for `lm-eval`,
which passes them on to lm-evaluation-harness's command line) and `main(config)`. A command's module is its name
with `_` for `-`.

Command modules import the heavy packages (transformers, peft, torch models) inside their functions, so building
the parser (`ivon-lora --help`) imports none of them.
"""

from . import training  # noqa: F401 (provides each objective's train steps to its record in ivon_lora.objectives)

COMMANDS = ("train", "eval", "prune", "export", "inspect", "generate", "lm-eval", "sensitivity", "merge", "refine",
            "compare")  # fmt: skip


def module_name(command: str) -> str:
    """The module of a command (`lm-eval` -> `lm_eval`)."""
    return command.replace("-", "_")
