"""One module per command of `ivon-lora`; each has `make_parser(subparsers)`, `config_from(options)` (the typed
config: a recipe for train, an `ivon_lora.config` dataclass for the others) and `main(config)`.

Command modules import the heavy packages (transformers, peft, torch models) inside their functions, so building
the parser (`ivon-lora --help`) imports none of them.
"""

COMMANDS = ("train", "eval", "prune", "export", "inspect")
