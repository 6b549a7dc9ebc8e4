"""The typed configs of the commands other than train, one dataclass each, read from a YAML file, key=value
overrides and the command's flags (`load_command_config`); each field's metadata is also its flag's
(`ivon_lora.commands._options.add_field_arguments`): help, choices, bounds and the default are written once.

One module per command family: here what they share (`OutputArguments`, `load_command_config`) and the configs of
the commands that write a new artifact (export, generate, merge); `evaluation` holds eval's, `posterior_commands`
those of the commands that read or reshape a run's posterior (prune, inspect, sensitivity, refine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..vocabulary import (
    MERGE_METHODS,
    MERGE_SPACES,
)
from ..validation import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_fields
from .parsing import (
    check_values,
    parse_overrides,
    parse_values,
    read_yaml,
    rename_keys,
    renamed_keys,
)


TRUST_REMOTE_CODE_HELP = (
    "run the run's base model's own code, which its recipe's trust_remote_code: true asks for "
    "(a run dir's setting alone is never enough: only for runs whose code you trust)"
)


@dataclass
class OutputArguments:
    out: str | None = field(default=None, metadata={"help": "output dir (must not exist or be empty)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --out"})


@dataclass
class ExportConfig(OutputArguments):
    run_dir: str | None = field(
        default=None, metadata={"help": "run, checkpoint or pruned dir", "positional": "RUN_DIR"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": TRUST_REMOTE_CODE_HELP})

    def __post_init__(self):
        for key in ("run_dir", "out"):
            if getattr(self, key) is None:
                raise ValueError(f"{key} is required")


@dataclass
class GenerateConfig:
    """The options of `ivon-lora generate` (from a YAML file, key=value and flags, like eval's)."""

    run_dir: str | None = field(default=None, metadata={"help": "run or checkpoint dir", "positional": "RUN_DIR"})
    prompt: list[str] | None = field(
        default=None, metadata={"help": "a prompt (repeat the flag for several)", "metavar": "TEXT", "action": "append"}
    )
    prompts_file: str | None = field(
        default=None,
        metadata={
            "help": ".jsonl with a 'prompt' (text) or 'messages' (chat messages) per line, or a text file with one prompt "
            "per non-blank line",
            "metavar": "FILE",
        },
    )
    samples: int = field(default=0, metadata={"bounds": NON_NEGATIVE, "help": "posterior samples S, one answer each"})
    seed: int = field(default=0, metadata={"help": "seed of the posterior samples"})
    max_new_tokens: int = field(
        default=64, metadata={"bounds": AT_LEAST_ONE, "help": "tokens generated per answer at most"}
    )
    batch_size: int = field(default=8, metadata={"bounds": AT_LEAST_ONE, "help": "prompts decoded together"})
    system: str | None = field(
        default=None, metadata={"help": "system message of every prompt (needs a chat template)", "metavar": "TEXT"}
    )
    no_chat: bool = field(default=False, metadata={"help": "plain prompts even if the tokenizer has a chat template"})
    out: str | None = field(
        default=None,
        metadata={
            "help": "jsonl file of the answers, with the run, options and versions (must not exist)",
            "metavar": "FILE.jsonl",
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})
    trust_remote_code: bool = field(default=False, metadata={"help": TRUST_REMOTE_CODE_HELP})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("run_dir is required")
        check_fields(self)


@dataclass
class MergeConfig(OutputArguments):
    run_dirs: list[str] | None = field(
        default=None, metadata={"help": "two or more run dirs to merge", "positional": "RUN_DIR"}
    )
    method: list[str] | None = field(
        default=None,
        metadata={
            "help": "uncertainty, posterior, or a PEFT combination type (linear, cat, svd, ties, dare_ties, ...); several "
            "with --sweep",
            "choices": MERGE_METHODS,
        },
    )
    weights: list[float] | None = field(default=None, metadata={"help": "one weight α per run (default 1/N each)"})
    space: str = field(
        default="delta",
        metadata={
            "help": "uncertainty / posterior: merge each ΔW = B·A (delta) or A and B separately (factor)",
            "choices": MERGE_SPACES,
        },
    )
    density: float | None = field(
        default=None,
        metadata={
            "bounds": Bounds(0.0, 1.0, low_inclusive=False),
            "help": "fraction kept by ties, dare_*, magnitude_prune",
        },
    )
    rank: int | None = field(
        default=None,
        metadata={
            "bounds": AT_LEAST_ONE,
            "help": "rank of the merged adapter (delta space and *_svd; default the sum / PEFT's max of the input ranks)",
        },
    )
    base_precision: float = field(
        default=0.0,
        metadata={
            "bounds": NON_NEGATIVE,
            "help": "uncertainty: H₀ as a multiple of the inputs' mean precision per matrix (0: precision-weighted "
            "average; large: task arithmetic)",
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of DARE's random drops"})
    sweep: bool = field(default=False, metadata={"help": "merge at many weights and score each on every input's task"})
    sweep_values: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75, 1.0],
        metadata={"help": "--sweep, two runs: the grid of each run's weight"},
    )
    sweep_steps: int = field(
        default=4, metadata={"bounds": AT_LEAST_ONE, "help": "--sweep, three or more runs: simplex lattice step 1/N"}
    )
    split: str = field(default="validation", metadata={"help": "--sweep: the split each task is scored on"})
    limit: int | None = field(default=None, metadata={"help": "--sweep: score only the first N records of each split"})
    references: list[str] | None = field(
        default=None, metadata={"help": "--sweep: run dirs scored as reference points (e.g. multitask finetunes)"}
    )
    batch_size: int = field(default=32, metadata={"help": "--sweep: examples per forward pass"})

    def __post_init__(self):
        if not self.run_dirs or len(self.run_dirs) < 2:
            raise ValueError("two or more run dirs are required")
        if not self.method:
            raise ValueError("method is required")
        if len(self.method) > 1 and not self.sweep:
            raise ValueError("several methods need sweep (one merged dir has one method)")
        if not self.sweep and self.out is None:
            raise ValueError("out is required")
        check_fields(self)


def load_command_config(cls, command: str, path: str | None, overrides: list[str] = (), flags: dict | None = None):
    """`cls` (EvalConfig, PruneConfig, ExportConfig, InspectConfig, GenerateConfig, SensitivityConfig, MergeConfig)
    from a YAML file, then key=value overrides, then flags."""
    values = read_yaml(path, "config") if path is not None else {}
    command_line = {**parse_overrides(list(overrides)), **(flags or {})}
    values.update(command_line)
    where = f" in {path}" if path else ""
    values = rename_keys(values, renamed_keys((cls,)), where, kind="config", command_line=command_line)
    values = check_values(values, (cls,), where, kind="config", command_line=command_line,
                          help_hint=f" `ivon-lora {command} --help` lists the keys (flags with - as _).")  # fmt: skip
    (config,) = parse_values(values, (cls,), where, kind="config", command_line=command_line)
    return config
