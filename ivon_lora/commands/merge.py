"""`ivon-lora merge`: two or more run dirs -> one merged run dir (PEFT adapter, posterior where the method defines
one, recipe, provenance merge.json, model card), or with --sweep the preview of many weightings: every merged
adapter scored on every input's task, the trade-off table, the plot and the cost per point (`ivon_lora.merging`).
"""

from __future__ import annotations

import argparse
import logging
import os

from ..config import MergeConfig
from ._options import build_parser, config_from_options

logger = logging.getLogger(__name__)


CONFIG_CLASS = MergeConfig  # the parser's flags and the config that main gets
# A sweep's output dir (sweep.json, ...) is not a merged run dir: its own command name, so --overwrite tells them apart.
SWEEP_COMMAND = "merge --sweep"


def make_parser(subparsers) -> argparse.ArgumentParser:
    return build_parser(
        subparsers, "merge",
        help="Merge run dirs' adapters by their posteriors (uncertainty, posterior) or PEFT's types; --sweep "
             "previews many weightings.",
        description="Writes a run dir (adapter_model.safetensors, adapter_config.json, posterior files where the "
                    "method defines them, recipe.yaml, merge.json, README.md) to --out; with --sweep, sweep.json, "
                    "sweep.md and sweep.png. Options also come from a YAML CONFIG and key=value.",
        config_class=CONFIG_CLASS,
    )  # fmt: skip


def config_from(options: argparse.Namespace) -> MergeConfig:
    return config_from_options(options, CONFIG_CLASS, "merge")


def main(config) -> int:
    from ..merging import merge_runs

    if config.sweep:
        run_sweep(config)
        return 0
    merge_runs(config.run_dirs, config.method[0], config.weights, config.out, space=config.space, density=config.density,
               rank=config.rank, base_precision=config.base_precision, seed=config.seed, overwrite=config.overwrite)  # fmt: skip
    return 0


def run_sweep(config) -> dict:
    """Merge at every weight point by every method, score each on every input's task; write the report."""
    from ..fileio import write_json_atomic
    from ..output_dir import claim_output_dir, staged_output_dir
    from ..errors import UsageError
    from ..merging.runs import check_inputs, read_input
    from ..merging.sweep import (SWEEP_NAME, SWEEP_PLOT_NAME, SWEEP_TABLE_NAME, AdapterScorer, plot_sweep,
                                 sweep_merges, sweep_table, weight_points)  # fmt: skip
    from ..rundir import environment
    from ..tasks import load_split

    out = config.out or os.path.join(os.path.dirname(os.path.abspath(config.run_dirs[0])), "merge-sweep")
    input_dirs = {f"input run {i + 1}": d for i, d in enumerate([*config.run_dirs, *(config.references or [])])}
    claim_output_dir(out, SWEEP_COMMAND, config.overwrite, input_dirs)
    inputs = [read_input(directory) for directory in config.run_dirs]
    points = weight_points(len(inputs), config.sweep_values, config.sweep_steps)
    specs = [_spec(config, method) for method in config.method]
    for spec in specs:  # every method checked before the model loads
        check_inputs(inputs, spec["method"], spec["space"], list(points[0]), spec["density"])
    tasks = [run.task for run in inputs]
    if None in tasks:
        raise UsageError(f"{inputs[tasks.index(None)].directory} has no recipe.yaml naming its task: a sweep scores "
                         "each input's task")  # fmt: skip
    tasks = list(dict.fromkeys(tasks))
    logger.info("sweep: %d points x %d methods on %s %s", len(points), len(specs), ", ".join(tasks), config.split)
    splits = {task: load_split(task, config.split, limit=config.limit) for task in tasks}
    scorer = AdapterScorer(config.run_dirs[0], splits, config.batch_size)
    rows = sweep_merges(inputs, specs, points, scorer, references=config.references or [])
    result = {"inputs": config.run_dirs, "tasks": tasks, "split": config.split, "limit": config.limit,
              "methods": specs, "points": points, "rows": rows, "environment": environment(),
              "protocol": "each adapter at its weights (no samples); accuracy, NLL, ECE with 10 bins"}  # fmt: skip
    with staged_output_dir(out, SWEEP_COMMAND) as staging:
        write_json_atomic(os.path.join(staging, SWEEP_NAME), result)
        with open(os.path.join(staging, SWEEP_TABLE_NAME), "w") as f:
            f.write(sweep_table(rows, tasks) + "\n")
        if len(tasks) == 2:
            plot_sweep(rows, tasks[0], tasks[1], os.path.join(staging, SWEEP_PLOT_NAME))
    logger.info("wrote %s", out)
    return result


def _spec(config, method: str) -> dict:
    from ..merging.peft_types import DENSITY_TYPES

    return {"method": method, "space": config.space, "density": config.density if method in DENSITY_TYPES else None,
            "rank": config.rank, "base_precision": config.base_precision if method == "uncertainty" else 0.0,
            "seed": config.seed}  # fmt: skip
