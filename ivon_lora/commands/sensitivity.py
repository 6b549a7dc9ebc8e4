"""`ivon-lora sensitivity`: what each training example did to the model, from the posterior (the MPE).

For an IVON run of a multiple-choice task: per example the error, the prediction variance over the adapter under
the posterior, the sensitivity s_i (how far its prediction moves when it is left out of training) and the
leave-one-out probability of its label; the LOO-NLL estimate of the split. Output dir (default
RUN_DIR/sensitivity-SPLIT), written staged and swapped in whole: sensitivity.jsonl (per example), ranked.txt (all
examples, most sensitive first; the top --top are printed), summary.json (LOO-NLL, resolved settings, protocol,
versions) and sensitivity.png. See `ivon_lora.sensitivity`.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..config import SensitivityConfig
from ._options import build_parser, config_from_options

logger = logging.getLogger(__name__)

PROTOCOL = {
    "outputs": "the K answer-token logits at the last prompt position (the choice objective's), at the posterior mean",
    "error": "e = softmax(f) - onehot(label)",
    "covariance": "V = J Σ Jᵀ over the adapter (K x K; --covariance diagonal: v = diag V), Σ the posterior's "
    "diagonal covariance 1/(ess (h + δ))",
    "loo": "f + V e (diagonal: f + e ⊙ v); LOO-NLL = mean of -log softmax(f + V e)[label]",
    "sensitivity": "s = Σ_k |Δp_k|, Δp = (diag(p) - p pᵀ) V e (diagonal: p (1 - p) ⊙ e ⊙ v): the first-order change "
    "of p when the example is left out",
    "reference": "Nickl, Xu, Tailor, Möllenhoff, Khan: The Memory-Perturbation Equation, NeurIPS 2023 (arXiv 2310.19273)",
}


CONFIG_CLASS = SensitivityConfig  # the parser's flags and the config that main gets


def make_parser(subparsers) -> argparse.ArgumentParser:
    return build_parser(
        subparsers, "sensitivity",
        help="Per-example sensitivity of an IVON run to its training data (Memory-Perturbation Equation) and the "
             "leave-one-out NLL estimate.",
        description="Writes sensitivity.jsonl, ranked.txt, summary.json and sensitivity.png to --out (default "
                    "RUN_DIR/sensitivity-SPLIT). Options also come from a YAML CONFIG and key=value.",
        config_class=CONFIG_CLASS,
    )  # fmt: skip


def config_from(options: argparse.Namespace) -> SensitivityConfig:
    return config_from_options(options, CONFIG_CLASS, "sensitivity")


def _checked_run(options) -> dict:
    """The run dir as `describe_run` sees it, refused unless it is an IVON multiple-choice run."""
    from ..fileio import read_json
    from ..filenames import MERGE_NAME
    from ..errors import UsageError
    from ..objectives import get_objective
    from ..rundir import describe_run, optimizer_name

    described = describe_run(options.run_dir, set())
    recipe = described["recipe"]
    if not described["has_posterior"]:
        optimizer = optimizer_name(recipe) if recipe else "unknown"
        if optimizer != "ivon":
            raise UsageError(
                f"{options.run_dir} was trained with {optimizer}, not IVON: it has no posterior, so no prediction "
                "variance, sensitivity or leave-one-out estimate. What it can give is a ranking by loss (`ivon-lora "
                "eval RUN --split train` writes every example's probabilities), which misses how much the model "
                "depends on an example"
            )  # fmt: skip
        if os.path.isfile(os.path.join(options.run_dir, MERGE_NAME)):
            method = read_json(os.path.join(options.run_dir, MERGE_NAME)).get("method")
            raise UsageError(f"{options.run_dir} is a merge (--method {method}), which defines no posterior over the "
                             "adapter's tensors (only --method posterior --space factor does): score the runs it "
                             "merged instead")  # fmt: skip
        raise UsageError(f"{options.run_dir} has no posterior (posterior.safetensors is missing): train it with "
                         "optim=ivon")  # fmt: skip
    if recipe is not None and get_objective(recipe.objective).eval_kind != "multiple_choice":
        raise UsageError(f"{options.run_dir} is an objective: {recipe.objective} run: `ivon-lora sensitivity` scores "
                         "multiple-choice runs; for SFT the sequence-level version is "
                         "ivon_lora.sft.sensitivity.sft_sensitivity, from Python")  # fmt: skip
    return described


def _flipped_labels(task, split: str, file: str | None) -> dict[str, bool] | None:
    """id -> label_flipped when the task's records say (wordfacts' train split does), else None."""
    from ..tasks.loading import load_records

    records = load_records(task, split, file)
    if not records or "label_flipped" not in records[0] or task.id_field is None:
        return None
    return {str(r[task.id_field]): bool(r["label_flipped"]) for r in records}


def main(options) -> int:
    run_sensitivity(options)
    return 0


def run_sensitivity(options) -> dict:
    """Score `options` (a `SensitivityConfig`); returns what summary.json holds."""
    from ..fileio import json_line, write_json_atomic
    from ..filenames import (
        SENSITIVITY_EXAMPLES_NAME,
        SENSITIVITY_PLOT_NAME,
        SENSITIVITY_RANKED_NAME,
        SENSITIVITY_SUMMARY_NAME,
    )
    from ..output_dir import claim_output_dir, staged_output_dir
    from ..rundir import environment
    from ._choice_data import choice_task, labelled_split

    described = _checked_run(options)
    recipe = described["recipe"]
    task_name, task = choice_task(options.task, recipe, options.run_dir, "sensitivity")
    out = options.out or os.path.join(options.run_dir, f"sensitivity-{options.split}")
    claim_output_dir(out, "sensitivity", options.overwrite, {"run dir": options.run_dir} if options.out else {})
    loaded = labelled_split(task, task_name, options.split, options.file, options.limit, recipe, "the sensitivity")
    flipped = _flipped_labels(task, options.split, options.file)

    from ..choice import format_examples
    from ..rundir import load_run
    from ..choice.sensitivity import choice_sensitivity
    from ..sensitivity import rescaled_to_ess
    from ..sensitivity.report import plot_sensitivity, ranked_lines

    run = load_run(described["dir"])
    examples = format_examples(loaded.examples, tokenizer=run.tokenizer, model_args=run.model_args)
    posterior = rescaled_to_ess(run.posterior, options.ess)
    result = choice_sensitivity(run.model, run.tokenizer, examples, posterior, variance=options.variance,
                                covariance=options.covariance,
                                num_samples=options.samples, batch_size=options.batch_size,
                                max_length=getattr(run.recipe.data, "max_length", None) if run.recipe else None,
                                seed=options.seed, progress=True)  # fmt: skip
    summary = {
        "run_dir": described["dir"], "task": task.as_dict(), "data": loaded.as_dict(), **result.summary(),
        "settings": {"variance": options.variance, "covariance": options.covariance, "samples": options.samples if options.variance == "sampled" else None,
                     "seed": options.seed, "ess": posterior.config.get("ess") if options.ess is None else options.ess,
                     "run_ess": run.posterior.config.get("ess"), "batch_size": options.batch_size,
                     "limit": options.limit, "split": options.split, "file": options.file},
        # A pruned or tempered posterior (`ivon-lora prune`) changes every variance: what the scores were made of.
        "posterior": {key: run.posterior.config.get(key) for key in ("optimizer", "step", "temperature", "pruning")},
        "protocol": PROTOCOL, "environment": environment(),
    }  # fmt: skip
    if flipped is not None:
        summary["label_flipped"] = sum(flipped.get(i, False) for i in result.ids)
    lines = ranked_lines(result, flipped)
    with staged_output_dir(out, "sensitivity") as staging:
        with open(os.path.join(staging, SENSITIVITY_EXAMPLES_NAME), "w") as f:
            for row in result.rows():
                if flipped is not None:
                    row["label_flipped"] = flipped.get(row["id"])
                f.write(json_line(row))
        with open(os.path.join(staging, SENSITIVITY_RANKED_NAME), "w") as f:
            f.write("\n".join(lines) + "\n")
        write_json_atomic(os.path.join(staging, SENSITIVITY_SUMMARY_NAME), summary)
        plot_sensitivity(result, os.path.join(staging, SENSITIVITY_PLOT_NAME),
                         f"{os.path.basename(os.path.normpath(options.run_dir))}: {task_name} {options.split}, "
                         f"{len(result.ids)} examples, {options.variance} {options.covariance} covariance; LOO-NLL {summary['loo_nll']:.3f}",
                         flipped)  # fmt: skip
    print(f"LOO-NLL estimate {summary['loo_nll']:.4f} (NLL at the mean {summary['nll']:.4f}) over {len(result.ids)} "
          f"{task_name} {options.split} examples; the {min(options.top, len(result.ids))} most sensitive:")  # fmt: skip
    print("\n".join(lines[: options.top + 1]))
    logger.info("wrote %s", out)
    return summary
