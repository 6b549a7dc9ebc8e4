"""The typed configs of eval, prune, export, inspect, generate, sensitivity and merge, one dataclass each, read from a
YAML file, key=value overrides and the command's flags (`load_command_config`). Each field's metadata is also its
flag's (`ivon_lora.commands._options.add_field_arguments`): help, choices, bounds and the default are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..vocabulary import (
    CURVATURE_METHODS,
    DECODING_MODES,
    DEFAULT_CURVATURE_SAMPLES,
    DEFAULT_ECE_BINS,
    DEFAULT_PRUNE_FRACTIONS,
    DEFAULT_SELECTION_CRITERION,
    MERGE_METHODS,
    MERGE_SPACES,
    PRUNE_CRITERIA,
    PRUNE_MODES,
    PRUNE_SCOPES,
    selection_criteria,
)
from ..validation import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Bounds, check_fields
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
class PruneConfig(OutputArguments):
    run_dir: str | None = field(
        default=None, metadata={"help": "run or checkpoint dir trained with optim=ivon", "positional": "RUN_DIR"}
    )
    fraction: float | None = field(
        default=None, metadata={"help": "fraction of adapter entries to prune (required)", "bounds": UNIT_INTERVAL}
    )
    scope: str = field(
        default="global", metadata={"help": "rank entries globally or per matrix", "choices": PRUNE_SCOPES}
    )
    mode: str = field(
        default="zero", metadata={"help": "zero: mean and variance 0; denoise: variance 0", "choices": PRUNE_MODES}
    )
    criterion: str = field(default="snr", metadata={"help": "|m|/sqrt(v), |m| or 1/sqrt(v)", "choices": PRUNE_CRITERIA})
    temperature: float = field(default=1.0, metadata={"help": "also divide the variance by this", "bounds": POSITIVE})

    def __post_init__(self):
        for key in ("run_dir", "fraction", "out"):
            if getattr(self, key) is None:
                raise ValueError(f"{key} is required")
        check_fields(self)


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
class EvalConfig(OutputArguments):
    run_dir: str | None = field(
        default=None, metadata={"help": "run, checkpoint or pruned dir", "positional": "RUN_DIR"}
    )
    task: list[str] | None = field(
        default=None,
        metadata={"help": "task name(s), e.g. arc_challenge mmlu:college_physics (default: the run's dataset)"},
    )
    split: str | None = field(
        default=None, metadata={"help": "reported split (default: the run's eval_split, else the protocol's)"}
    )
    file: str | None = field(
        default=None, metadata={"help": "local json/jsonl/parquet/csv records (file or dir) of --split, one --task"}
    )
    protocol: str | None = field(
        default=None, metadata={"help": "protocol preset: ivon-lora or blob (default: the run's recipe)"}
    )
    samples: int | None = field(
        default=None,
        metadata={
            "bounds": NON_NEGATIVE,
            "help": "posterior samples S, every kind of task (default: the run's own final_eval_samples; 10 for a run "
            "without a recipe); eval.json's plan records which source set it",
        },
    )
    batch_size: int = field(default=32, metadata={"bounds": AT_LEAST_ONE, "help": "examples per forward pass"})
    limit: int | None = field(
        default=None, metadata={"bounds": AT_LEAST_ONE, "help": "evaluate only the first N records of each split"}
    )
    seed: int | None = field(
        default=None, metadata={"help": "seed of the samples (default: the run's own eval_seed; 0 without a recipe)"}
    )
    samples_per_pass: int = field(
        default=0,
        metadata={
            "bounds": NON_NEGATIVE,
            "help": "multiple-choice tasks: score K posterior samples per forward pass, each with its own LoRA delta on "
            "a stacked batch (default 0: one sample per pass)",
            "metavar": "K",
            "formerly": "batched_samples",
        },
    )
    ece_bins: list[int] = field(
        default_factory=lambda: list(DEFAULT_ECE_BINS), metadata={"bounds": AT_LEAST_ONE, "help": "ECE bin counts"}
    )
    baseline: str | None = field(
        default=None, metadata={"help": "a second run dir (e.g. AdamW) evaluated side by side"}
    )
    mc_dropout_samples: int = field(
        default=0,
        metadata={
            "bounds": NON_NEGATIVE,
            "help": "MC-dropout samples for runs without a posterior (default 0: weights only)",
        },
    )
    decoding: str = field(
        default="mean",
        metadata={
            "help": "generative tasks: the chosen answer greedy at the posterior mean (mean) or posterior-averaged "
            "(averaged: each token the argmax of the S samples' mean next-token distribution)",
            "choices": DECODING_MODES,
        },
    )
    sampling_temperature: float = field(
        default=1.0,
        metadata={
            "help": "generative tasks: temperature of the S sampled answers of a run without posterior or MC dropout",
            "bounds": POSITIVE,
        },
    )
    prune_fractions: list[float] = field(
        default_factory=lambda: [0.0], metadata={"help": "pruning fractions", "bounds": UNIT_INTERVAL}
    )
    temperatures: list[float] = field(
        default_factory=lambda: [1.0], metadata={"help": "posterior temperatures", "bounds": POSITIVE}
    )
    sweep: bool = field(
        default=False, metadata={"help": f"sweep the pruning fractions {', '.join(map(str, DEFAULT_PRUNE_FRACTIONS))}"}
    )
    prune_scope: str = field(
        default="global", metadata={"help": "rank entries globally or per matrix", "choices": PRUNE_SCOPES}
    )
    prune_mode: str = field(
        default="zero", metadata={"help": "zero: mean and variance 0; denoise: variance 0", "choices": PRUNE_MODES}
    )
    prune_criterion: str = field(
        default="snr", metadata={"help": "|m|/sqrt(v), |m| or 1/sqrt(v)", "choices": PRUNE_CRITERIA}
    )
    select_split: str | None = field(
        default=None,
        metadata={
            "help": "held-out split that sweeps, temperature scaling and the risk-averse selector fit on (never the "
            "reported split)"
        },
    )
    select_file: str | None = field(default=None, metadata={"help": "local records of --select-split"})
    select_by: str = field(
        default=DEFAULT_SELECTION_CRITERION,
        metadata={"help": "criterion of the choice, on the sampled predictive", "choices": tuple(selection_criteria())},
    )
    ensemble: list[str] | None = field(
        default=None,
        metadata={
            "help": "two or more run dirs (e.g. AdamW runs of different seeds) evaluated as a deep ensemble",
            "metavar": "RUN_DIR",
        },
    )
    temperature_scaling: bool = field(
        default=False, metadata={"help": "add each run temperature-scaled: one T fitted by NLL on --select-split"}
    )
    risk_averse: bool = field(
        default=False,
        metadata={
            "help": "add the risk-averse selector (mean - kappa * std of the chosen answer's sample probabilities) to "
            "posterior runs' selective prediction, kappa chosen on --select-split"
        },
    )
    lm_eval_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "instead of --task: lm-evaluation-harness multiple-choice tasks (several, or comma-separated as "
            "lm-eval takes them: arc_easy,hellaswag), scored by lm-eval; needs ivon-lora[lm-eval]"
        },
    )
    lm_eval_include_path: str | None = field(
        default=None, metadata={"help": "a dir of local lm-eval task YAMLs (lm-eval's --include_path)"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": TRUST_REMOTE_CODE_HELP})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("run_dir is required")
        check_fields(self)
        if self.lm_eval_tasks is not None:
            self.lm_eval_tasks = [
                name.strip() for item in self.lm_eval_tasks for name in item.split(",") if name.strip()
            ]
            if not self.lm_eval_tasks:
                raise ValueError("lm_eval_tasks names no task: pass e.g. arc_easy,hellaswag")
        if self.sweep:
            self.prune_fractions = list(DEFAULT_PRUNE_FRACTIONS)
        if self.ensemble is not None and len(self.ensemble) < 2:
            raise ValueError("ensemble needs at least 2 run dirs")

    @property
    def sweeping(self) -> bool:
        # A select_split alone asks for a (one-configuration) sweep, unless it is temperature scaling's split.
        several = len(self.prune_fractions) * len(self.temperatures) > 1
        return several or (self.select_split is not None and not self.temperature_scaling and not self.risk_averse)


@dataclass
class InspectConfig(OutputArguments):
    run_dir: str | None = field(
        default=None,
        metadata={"help": "run, checkpoint or pruned dir trained with optim=ivon", "positional": "RUN_DIR"},
    )
    predictions: str | None = field(
        default=None, metadata={"help": "per-example predictions jsonl (default: RUN_DIR/predictions.jsonl)"}
    )
    curvature: bool = field(
        default=False,
        metadata={
            "help": "also measure the exact diagonal GGN of the train split at the mean (loads the model) and report "
            "how the precision agrees with it"
        },
    )
    curvature_limit: int = field(
        default=256, metadata={"bounds": AT_LEAST_ONE, "help": "--curvature: train examples it is measured on, at most"}
    )

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("run_dir is required")
        check_fields(self)


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
class SensitivityConfig(OutputArguments):
    """The options of `ivon-lora sensitivity` (from a YAML file, key=value and flags, like eval's)."""

    run_dir: str | None = field(
        default=None, metadata={"help": "IVON run or checkpoint dir of a multiple-choice task", "positional": "RUN_DIR"}
    )
    split: str = field(default="train", metadata={"help": "split of the run's task to score"})
    file: str | None = field(
        default=None, metadata={"help": "local json/jsonl/parquet/csv records (file or dir) of --split"}
    )
    task: str | None = field(default=None, metadata={"help": "task name (default: the run's dataset)"})
    variance: str = field(
        default="exact",
        metadata={
            "help": "exact: diag(J Σ Jᵀ) by K backward passes per batch; sampled: sample variance over S posterior "
            "samples",
            "choices": ("exact", "sampled"),
        },
    )
    samples: int = field(
        default=10, metadata={"bounds": Bounds(2), "help": "posterior samples S of --variance sampled"}
    )
    ess: float | None = field(
        default=None,
        metadata={
            "bounds": POSITIVE,
            "help": "rescale the posterior to this ess (e.g. the train set size N) for the LOO estimates, rankings "
            "unchanged (default: the run's)",
        },
    )
    top: int = field(default=20, metadata={"bounds": NON_NEGATIVE, "help": "most sensitive examples printed"})
    batch_size: int = field(default=16, metadata={"bounds": AT_LEAST_ONE, "help": "examples per forward pass"})
    limit: int | None = field(default=None, metadata={"bounds": AT_LEAST_ONE, "help": "score only the first N records"})
    seed: int = field(default=0, metadata={"help": "seed of the posterior samples (--variance sampled)"})

    def __post_init__(self):
        if self.run_dir is None:
            raise ValueError("run_dir is required")
        check_fields(self)


@dataclass
class RefineConfig(OutputArguments):
    """The options of `ivon-lora refine` (from a YAML file, key=value and flags, like eval's)."""

    run_dir: str | None = field(
        default=None, metadata={"help": "IVON run or checkpoint dir of a multiple-choice task", "positional": "RUN_DIR"}
    )
    method: str = field(
        default="ggn",
        metadata={
            "help": "ggn: the exact diagonal GGN (Fisher over the K labels); fisher: --samples labels drawn from the "
            "model per example; ivon: IVON's own estimator over --samples antithetic posterior samples per batch",
            "choices": CURVATURE_METHODS,
        },
    )
    samples: int = field(
        default=DEFAULT_CURVATURE_SAMPLES,
        metadata={
            "bounds": AT_LEAST_ONE,
            "help": "fisher: labels drawn per example; ivon: antithetic posterior sample pairs per batch",
        },
    )
    split: str = field(default="train", metadata={"help": "split of the run's task the curvature is measured on"})
    file: str | None = field(
        default=None, metadata={"help": "local json/jsonl/parquet/csv records (file or dir) of --split"}
    )
    task: str | None = field(default=None, metadata={"help": "task name (default: the run's dataset)"})
    ess: float | None = field(
        default=None,
        metadata={
            "bounds": POSITIVE,
            "help": "the precision's scale ess·(h + δ), e.g. the train set size N (default: the run's ess)",
        },
    )
    prior_precision: float | None = field(
        default=None,
        metadata={
            "bounds": POSITIVE,
            "help": "δ, the prior precision per example (default: the run's weight_decay, else its hess_init)",
        },
    )
    batch_size: int = field(default=16, metadata={"bounds": AT_LEAST_ONE, "help": "examples per forward pass"})
    limit: int | None = field(default=None, metadata={"bounds": AT_LEAST_ONE, "help": "use only the first N records"})
    seed: int = field(default=0, metadata={"help": "seed of the drawn labels or posterior samples"})

    def __post_init__(self):
        for key in ("run_dir", "out"):
            if getattr(self, key) is None:
                raise ValueError(f"{key} is required")
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
