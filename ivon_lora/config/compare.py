"""The options of `ivon-lora compare` (`CompareConfig`), from its flags: the recipes compared, the seeds, the grid of
each recipe, the selection metric and split, the baselines, the evaluation and the output. Each field's metadata is
its flag's (`ivon_lora.commands._options.add_field_arguments`). What needs the recipes (tasks, splits, grid keys,
budgets, which baselines apply) is checked in `ivon_lora.comparison.plan`, still before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..validation import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_fields, invalid_value, one_of
from ..vocabulary import selection_criteria

# The baselines compare derives from the runs it trains (`ivon_lora.comparison.plan.BASELINES` says what each is).
BASELINE_NAMES = ("temperature", "early_stopping", "ensemble", "mc_dropout")
DEFAULT_SELECT_METRIC = "nll"


@dataclass
class CompareConfig:
    recipes: list[str] | None = field(
        default=None,
        metadata={"help": "the recipes compared (YAML; one task), each a method", "positional": "RECIPE"},
    )
    seeds: int = field(
        default=3,
        metadata={
            "bounds": NON_NEGATIVE,
            "help": "reported seeds N: the chosen settings trained with the N seeds after the selection seeds",
        },
    )
    select_seeds: int = field(
        default=1,
        metadata={
            "bounds": NON_NEGATIVE,
            "help": "selection seeds K: every grid point trained with seeds 0..K-1, chosen on them",
        },
    )
    reported_seeds: list[int] | None = field(
        default=None, metadata={"help": "the reported seeds themselves (instead of --seeds)", "metavar": "SEED"}
    )
    selection_seeds: list[int] | None = field(
        default=None, metadata={"help": "the selection seeds themselves (instead of --select-seeds)", "metavar": "SEED"}
    )
    grid: list[str] | None = field(
        default=None,
        metadata={
            "help": "a grid axis, repeat the flag for more: [N:]KEY=V1,V2,... varies recipe key KEY over the values for "
            "recipe N (its position, 1-based, or its file name without .yaml), or for every recipe without N; the "
            "axes of a recipe multiply; one value sets the key (a fixed override)",
            "metavar": "[N:]KEY=V1,V2",
            "action": "append",
        },
    )
    select_metric: str = field(
        default=DEFAULT_SELECT_METRIC,
        metadata={
            "help": "the validation metric a grid point is chosen by (mean over the selection seeds, of the method's "
            "own predictive)",
            "choices": tuple(selection_criteria()),
        },
    )
    baselines: list[str] | None = field(
        default=None,
        metadata={
            "help": f"baselines derived from each recipe's runs, comma-separated or several: {', '.join(BASELINE_NAMES)} "
            "(default: every one that applies; one asked for must apply)",
        },
    )
    select_split: str = field(
        default="validation",
        metadata={"help": "the held-out split of the choice, temperature scaling and early stopping"},
    )
    split: str = field(default="test", metadata={"help": "the reported split, read only once the choice is final"})
    samples: int | None = field(
        default=None,
        metadata={
            "bounds": NON_NEGATIVE,
            "help": "posterior and MC-dropout samples S at evaluation (default: each run's final_eval_samples)",
        },
    )
    checkpoints: int = field(
        default=4,
        metadata={
            "bounds": AT_LEAST_ONE,
            "help": "early stopping: checkpoints per run, evenly spaced, the final one included",
        },
    )
    limit: int | None = field(
        default=None, metadata={"bounds": AT_LEAST_ONE, "help": "evaluate only the first N records of each split"}
    )
    batch_size: int = field(
        default=32, metadata={"bounds": AT_LEAST_ONE, "help": "examples per forward pass at evaluation"}
    )
    bootstrap: int = field(default=2000, metadata={"bounds": Bounds(100), "help": "paired bootstrap replicates"})
    dry_run: bool = field(
        default=False, metadata={"help": "print the plan and its estimated time (from a measured step) and stop"}
    )
    out: str | None = field(
        default=None,
        metadata={"help": "output dir: every run, every evaluation and the report (a killed compare resumes in it)"},
    )
    overwrite: bool = field(default=False, metadata={"help": "start afresh in an --out that a compare wrote"})

    def __post_init__(self):
        if not self.recipes:
            raise ValueError("at least one RECIPE is required")
        if self.out is None and not self.dry_run:
            raise ValueError("out is required (where the runs, evaluations and report go)")
        check_fields(self)  # the bounds and choices of the fields' metadata
        if self.baselines is not None:
            self.baselines = [name.strip() for item in self.baselines for name in item.split(",") if name.strip()]
            for name in self.baselines:  # checked once split: a flag's value may list several, comma-separated
                if name not in BASELINE_NAMES:
                    raise ValueError(invalid_value("baselines", name, one_of(BASELINE_NAMES)))
