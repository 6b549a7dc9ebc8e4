"""The configs of the commands that read or reshape a run's posterior: `ivon-lora prune`, `inspect`, `sensitivity`
and `refine`. Their field metadata is also their flags' (see `ivon_lora.config.commands`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..vocabulary import (
    CURVATURE_METHODS,
    DEFAULT_CURVATURE_SAMPLES,
    OUTPUT_COVARIANCES,
    PRUNE_CRITERIA,
    PRUNE_MODES,
    PRUNE_SCOPES,
)
from ..validation import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Bounds, check_fields

from .commands import OutputArguments


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
            "help": "exact: J Σ Jᵀ by K backward passes per batch; sampled: sample (co)variance over S posterior "
            "samples",
            "choices": ("exact", "sampled"),
        },
    )
    covariance: str = field(
        default="full",
        metadata={
            "help": "full: the K x K prediction covariance V (the leave-one-out shift V e); diagonal: its diagonal v "
            "(e ⊙ v, which overstates the shift when the answers' Jacobians correlate)",
            "choices": OUTPUT_COVARIANCES,
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
    ess: list[float] | None = field(
        default=None,
        metadata={
            "bounds": POSITIVE,
            "help": "the precision's scale ess·(h + δ), e.g. the train set size N (default: the run's ess); several "
            "values: the one with the lowest --select-split NLL is kept",
        },
    )
    prior_precision: list[float] | None = field(
        default=None,
        metadata={
            "bounds": POSITIVE,
            "help": "δ, the prior precision per example (default: the run's weight_decay, else its hess_init); "
            "several values: the one with the lowest --select-split NLL is kept",
        },
    )
    select_split: str = field(
        default="validation",
        metadata={
            "help": "with several --ess or --prior-precision values: the held-out split of the run's task on which "
            "each candidate's posterior predictive (--select-samples samples, the run's eval_seed) is scored "
            "and the lowest NLL kept"
        },
    )
    select_samples: int | None = field(
        default=None,
        metadata={
            "bounds": AT_LEAST_ONE,
            "help": "posterior samples S of the predictive the candidates are scored by (default: the run's own "
            "final_eval_samples, as eval's --samples)",
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
