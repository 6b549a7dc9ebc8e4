"""`ivon-lora compare`: recipes -> a seeded, fair comparison on one task, with paired confidence intervals.

Each recipe is a method. Its grid (`--grid`) is trained on the selection seeds and chosen on the selection split;
the chosen settings are trained on the reported seeds (disjoint from the selection seeds); every method and its
baselines (temperature scaling, early stopping, a deep ensemble, MC dropout: `ivon_lora.comparison.plan.BASELINES`)
are then scored on the reported split through `ivon-lora eval`'s evaluator, and each method is compared with every
other row by a paired bootstrap over the reported examples. Output dir: compare.json, compare.md, compare.png,
runs/ (one run dir per training) and evals/ (one eval output dir per evaluation); a killed compare, run again with
the same options, reuses what it finished. `run_compare` is the library function.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from ..config import CompareConfig
from ._options import add_field_arguments

logger = logging.getLogger(__name__)

CONFIG_CLASS = CompareConfig
# What compare writes into its --out (what --overwrite removes, nothing else).
OWN_ENTRIES = ("runs", "evals", "compare.json", "compare.md", "compare.png")


def make_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="Compare recipes on one task: grids chosen on selection seeds, reported seeds, baselines, paired "
        "confidence intervals.",
        description="Trains every recipe's grid on the selection seeds, chooses on --select-split, trains the "
        "choice on the reported seeds, scores methods and baselines on --split (read last) and writes "
        "compare.json, compare.md and compare.png to --out. Run again to resume.",
    )
    parser.add_argument("recipes", nargs="+", metavar="RECIPE", help="a recipe (YAML) per method, one task")
    add_field_arguments(parser, CONFIG_CLASS)
    return parser


def config_from(options: argparse.Namespace) -> CompareConfig:
    from ..config import load_command_config

    flags = {
        key: value for key, value in vars(options).items() if key not in ("command", "debug") and value is not None
    }
    return load_command_config(CONFIG_CLASS, "compare", None, [], flags)


def main(config) -> int:
    run_compare(config)
    return 0


def run_compare(config: CompareConfig, command: list[str] | None = None) -> dict:
    """Run the comparison `config` (`--dry-run`: print the plan and its estimated time instead); returns what
    compare.json holds (for a dry run, the plan's summary)."""
    from tqdm.auto import tqdm

    from ..comparison.plan import resolve_plan
    from ..comparison.protocol import Protocol
    from ..comparison.report import markdown, write_report, build_report
    from ..comparison.scoring import score_rows
    from ..rundir import environment
    from .eval import run_eval
    from .train import run_train

    plan = resolve_plan(config)  # every refusal before a model loads
    if config.dry_run:
        return dry_run(plan)
    _claim(config)
    units = _units(plan)
    with tqdm(total=units, desc="compare", unit="unit", dynamic_ncols=True) as progress:
        outcome = Protocol(plan, run_train, run_eval, progress).run()
    table, differences = score_rows(plan, outcome, config.bootstrap)
    report = build_report(plan, outcome, table, differences, environment(), command or sys.argv)
    write_report(config.out, report)
    for line in markdown(report).splitlines():
        logger.info("%s", line)
    logger.info("wrote %s", config.out)
    return report


def _claim(config) -> None:
    """--out: placeable, locked for this process, and empty or an earlier compare's, which is resumed (with
    --overwrite: its runs, evaluations and report removed first, nothing else)."""
    from ..output_dir import claim_resumable_output_dir

    out = config.out
    if not claim_resumable_output_dir(out, "compare"):
        return
    if not config.overwrite:
        logger.info("compare: resuming in %s (finished runs and evaluations are reused)", out)
        return
    for name in OWN_ENTRIES:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _units(plan) -> int:
    """Trainings plus evaluations (early stopping counted at its most), for the progress bar."""
    selection = sum(len(m.candidates) * len(plan.selection_seeds) for m in plan.methods if len(m.candidates) > 1)
    reported = len(plan.methods) * len(plan.reported_seeds)
    stopping = sum(len(plan.reported_seeds) * (plan.config.checkpoints + 2) for m in plan.methods
                   if "early_stopping" in m.baselines)  # fmt: skip
    ensembles = sum("ensemble" in m.baselines for m in plan.methods)
    return 2 * selection + 2 * reported + stopping + ensembles


def dry_run(plan) -> dict:
    """Print the plan: every training and evaluation, and the time they take from a measured step per method."""
    from ..comparison.plan import training_steps

    measured = {method.name: _measure_step(method, plan) for method in plan.methods}
    lines = [f"compare {plan.task}: select on {plan.select_split!r} (seeds {plan.selection_seeds}), report on "
             f"{plan.test_split!r} (seeds {plan.reported_seeds}); baselines {', '.join(plan.baselines) or 'none'}"]  # fmt: skip
    total_seconds, total_runs = 0.0, 0
    for method in plan.methods:
        runs = (len(method.candidates) * len(plan.selection_seeds) if len(method.candidates) > 1 else 0) + len(
            plan.reported_seeds
        )
        steps = training_steps(method.recipe(0, plan.reported_seeds[0]))
        seconds = runs * steps * measured[method.name]
        total_seconds += seconds
        total_runs += runs
        lines.append(f"  {method.name}: {len(method.candidates)} candidate(s) x {len(plan.selection_seeds)} selection "
                     f"seed(s) + {len(plan.reported_seeds)} reported seeds = {runs} runs of {steps} steps "
                     f"({method.budget['examples_per_step']} examples each); {measured[method.name]:.3f} s per step "
                     f"measured: about {seconds / 60:.1f} min of training")  # fmt: skip
    lines.append(f"  evaluations: about {_units(plan) - total_runs}; total training about {total_seconds / 60:.1f} "
                 "min (evaluation adds roughly the time of the final evaluation of each run)")  # fmt: skip
    lines += [f"  note: {note}" for note in plan.notes]
    print("\n".join(lines))
    return {"trainings": total_runs, "training_seconds": total_seconds, "seconds_per_step": measured}


def _measure_step(method, plan, steps: int = 4) -> float:
    """Seconds per optimizer step of `method`'s first planned recipe, from a short run in a temporary dir."""
    import tempfile

    from ..fileio import read_json
    from ..filenames import METRICS_NAME
    from .train import run_train

    with tempfile.TemporaryDirectory(prefix="ivon-lora-compare-probe-") as probe:
        overrides = [*method.overrides[(0, plan.reported_seeds[0])], f"output_dir={probe}", f"max_steps={steps}",
                     "save_strategy=no", "max_eval_samples=2", "final_eval_samples=1", "disable_tqdm=true"]  # fmt: skip
        from ..config import load_recipe

        run_train(load_recipe(method.path, overrides))
        return read_json(os.path.join(probe, METRICS_NAME))["train"]["train_runtime"] / steps
