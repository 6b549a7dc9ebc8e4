"""`ivon-lora inspect`: is a run's posterior doing anything? Diagnostics of the posterior and of its predictive.

Reads the run dir's posterior (no model loads, unless --curvature measures the GGN at the mean) and its per-example
predictions (`predictions.jsonl` of train, or any `predictions-TASK-RUN.jsonl` of eval); prints the summary and the
warnings, and with --out writes diagnostics.json and diagnostics.png there. `ivon-lora train` writes the same two files into the run dir at the end of an IVON run.
"""

from __future__ import annotations

import argparse
import os

from ..config import InspectConfig
from ._options import build_parser, config_from_options


CONFIG_CLASS = InspectConfig  # the parser's flags and the config that main gets


def make_parser(subparsers) -> argparse.ArgumentParser:
    return build_parser(
        subparsers, "inspect",
        help="Posterior diagnostics of a run: std/SNR per LoRA matrix, Hessian movement, how much samples change "
             "answers.",
        description="Print diagnostics of RUN_DIR's posterior and, from its predictions.jsonl (or --predictions), of "
                    "its predictive; with --out, write diagnostics.json and diagnostics.png there.",
        config_class=CONFIG_CLASS,
    )  # fmt: skip


def config_from(options: argparse.Namespace) -> InspectConfig:
    return config_from_options(options, CONFIG_CLASS, "inspect")


def main(config) -> int:
    inspect_run(config.run_dir, config.predictions, config.out, config.overwrite,
                curvature_limit=config.curvature_limit if config.curvature else None)  # fmt: skip
    return 0


def measured_curvature(directory: str, limit: int) -> dict:
    """`diagnostics.curvature_diagnostics` of the run against the exact diagonal GGN of (up to `limit` examples of)
    its task's train split, at the posterior mean (loads the model)."""
    from ..choice import format_examples
    from ..choice.curvature import choice_curvature
    from ..diagnostics import curvature_diagnostics
    from ..errors import UsageError
    from ..objectives import get_objective
    from ..rundir import describe_run, load_run
    from ._choice_data import choice_task, labelled_split

    recipe = describe_run(directory, set())["recipe"]
    if recipe is None or get_objective(recipe.objective).eval_kind != "multiple_choice":
        raise UsageError(f"--curvature: {directory} has no recipe.yaml of a multiple-choice run, whose train split "
                         "the curvature is measured on")  # fmt: skip
    name, task = choice_task(None, recipe, directory, "inspect --curvature")
    loaded = labelled_split(task, name, "train", None, limit, recipe, "the curvature of the training loss")
    run = load_run(directory)
    examples = format_examples(loaded.examples, tokenizer=run.tokenizer, model_args=run.model_args)
    ggn = choice_curvature(run.model, run.tokenizer, examples, run.posterior, "ggn",
                           max_length=getattr(recipe.data, "max_length", None), progress=True)  # fmt: skip
    return curvature_diagnostics(run.posterior, ggn, f"exact GGN on {len(examples)} train examples")


def inspect_run(
    directory: str, predictions: str | None = None, out: str | None = None, overwrite: bool = False,
    curvature_limit: int | None = None,
) -> dict:  # fmt: skip
    """Diagnostics of a run's posterior and (from per-example predictions) predictive: printed, and written to `out`;
    with `curvature_limit`, also against the curvature measured on that many train examples (`measured_curvature`)."""
    from ..filenames import PREDICTIONS_NAME
    from ..output_dir import claim_output_dir, staged_output_dir
    from ..diagnostics import diagnose, summary_lines, write_diagnostics
    from ..evaluation.predict import read_predictions
    from ..posterior import Posterior

    if out is not None:
        claim_output_dir(out, "inspect", overwrite, {"run dir": directory})
    path = predictions or os.path.join(directory, PREDICTIONS_NAME)
    if predictions is not None and not os.path.isfile(predictions):
        raise FileNotFoundError(f"predictions file {predictions!r} does not exist")
    posterior = Posterior.load(directory)
    mean, samples = read_predictions(path) if os.path.isfile(path) else (None, None)
    curvature = measured_curvature(directory, curvature_limit) if curvature_limit is not None else None
    diagnostics = diagnose(posterior, mean, samples, curvature)
    lines = [str(line) for line in summary_lines(diagnostics)]
    if samples is None:
        lines.append(f"no posterior-sample predictions in {path}: run `ivon-lora eval {directory}` and pass its "
                     "predictions-TASK-ivon.jsonl with --predictions")  # fmt: skip
    print("\n".join(lines))
    if out is not None:
        with staged_output_dir(out, "inspect") as staging:
            write_diagnostics(staging, diagnostics, os.path.basename(os.path.abspath(directory)))
    return diagnostics
