"""The config of `ivon-lora eval` (`EvalConfig`): what to evaluate, how many samples, the sweeps, baselines and
ensembles, the lm-eval tasks. Its field metadata is also its flags' (see `ivon_lora.config.commands`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..vocabulary import (
    DECODING_MODES,
    DEFAULT_ECE_BINS,
    DEFAULT_PRUNE_FRACTIONS,
    DEFAULT_SELECTION_CRITERION,
    PRUNE_CRITERIA,
    PRUNE_MODES,
    PRUNE_SCOPES,
    selection_criteria,
)
from ..validation import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, check_fields

from .commands import TRUST_REMOTE_CODE_HELP, OutputArguments


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
