"""`ivon-lora refine`: an IVON run's posterior with its precision re-estimated at the mean from the train split.

The mean (the adapter) is kept bitwise; the precision becomes ess·(h + δ), h the diagonal curvature of the average
training loss measured at the mean (`ivon_lora.curvature`): `ggn` exact (the Fisher with the K labels weighted by
the model's probabilities), `fisher` with --samples labels drawn from the model, `ivon` IVON's own Price estimator
averaged over --samples antithetic posterior samples per batch. δ is the run's prior precision (weight_decay), or its
hess_init where it trained without one (what IVON's h holds where no data reached it). The output is a run dir that
`eval`, `sensitivity`, `merge`, `inspect` and `prior_from` use as they use the run's own, its posterior_config.json
recording the method, the data and the scale under "refine".

Several values of --ess or --prior-precision make a grid: every (ess, δ) is scored on --select-split (validation)
through the evaluator, under the plan `ivon-lora eval OUT --split validation` resolves (--select-samples, else the
run's own samples; its eval_seed), and the one whose posterior predictive has the lowest NLL is written, every
candidate's numbers recorded under "refine" / "selection". The curvature is measured once: only the scale changes.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..config import RefineConfig
from ._options import build_parser, config_from_options

logger = logging.getLogger(__name__)

CONFIG_CLASS = RefineConfig  # the parser's flags and the config that main gets


def make_parser(subparsers) -> argparse.ArgumentParser:
    return build_parser(
        subparsers, "refine",
        help="Re-estimate an IVON run's posterior precision at its mean from the train split (GGN, sampled Fisher or "
             "IVON's own estimator); the mean is kept.",
        description="Writes a run dir (the same adapter, posterior.safetensors with the new variances, "
                    "posterior_config.json recording the method, data and scale, recipe, tokenizer) to --out. "
                    "Options also come from a YAML CONFIG and key=value.",
        config_class=CONFIG_CLASS,
    )  # fmt: skip


def config_from(options: argparse.Namespace) -> RefineConfig:
    return config_from_options(options, CONFIG_CLASS, "refine")


def main(config: RefineConfig) -> int:
    refine_run(config)
    return 0


def _prior_precisions(config: RefineConfig, posterior_config: dict, run_dir: str) -> list[float]:
    """--prior-precision, else the run's weight_decay, else its hess_init."""
    from ..errors import UsageError

    if config.prior_precision:
        return [float(value) for value in config.prior_precision]
    decay = posterior_config.get("weight_decay")
    if decay:
        return [float(decay)]
    hess_init = posterior_config.get("hyperparameters", {}).get("hess_init")
    if not hess_init:
        raise UsageError(f"{run_dir} records neither a weight_decay nor a hess_init for the prior: pass "
                         "--prior-precision")  # fmt: skip
    return [float(hess_init)]


def _selection_plan(config: RefineConfig, task, task_name: str):
    """The evaluation plan the candidates are scored under: `ivon-lora eval RUN --split SELECT_SPLIT
    [--samples SELECT_SAMPLES]`'s; refused when it samples nothing (the candidates differ only in their samples)."""
    from ..config import EvalConfig
    from ..errors import UsageError
    from ..evaluation.plan import resolve_plan

    if config.select_split == config.split:
        raise UsageError(f"--select-split {config.select_split}: it is the split the curvature is measured on; choose "
                         "the scale on a held-out split (validation)")  # fmt: skip
    if config.select_split not in task.splits:
        raise UsageError(f"--select-split {config.select_split}: task {task_name!r} has no such split (it has "
                         f"{', '.join(task.splits)})")  # fmt: skip
    options = EvalConfig(run_dir=config.run_dir, task=config.task, split=config.select_split,
                         batch_size=config.batch_size, samples=config.select_samples)  # fmt: skip
    plan, _ = resolve_plan(options)
    if not plan.samples:
        raise UsageError(f"{config.run_dir} evaluates with final_eval_samples 0, and the candidates' posteriors "
                         "differ only in their samples: pass --select-samples (e.g. 10)")  # fmt: skip
    return plan


def _choose(plan, run, records, grid: list, posterior_at, split: str) -> tuple[int, dict]:
    """(index of the (ess, δ) of `grid` whose posterior (`posterior_at(ess, δ)`, built one at a time) has the lowest
    NLL of its posterior predictive on the selection split's `records`, the record of every candidate's scores);
    ties go to the first."""
    from ..evaluation.kinds.choice import formatted, max_length, score_split, split_metrics
    from ..tasks import get_protocol

    examples = formatted(run, records)
    preset = get_protocol(plan.protocol)
    scored = []
    for ess, prior_precision in grid:
        posterior = posterior_at(ess, prior_precision)
        predictions = score_split(plan, run.model, run.tokenizer, examples, posterior, max_length(run))
        metrics = split_metrics(plan, predictions, preset)
        scored.append({"ess": ess, "prior_precision": prior_precision,
                       **{name: {key: metrics[name][key] for key in ("accuracy", "nll", "brier")}
                          for name in ("mean", "sampled")}})  # fmt: skip
        logger.info("refine candidate ess %g, prior precision %g: %s NLL %.4f (%d samples)", ess, prior_precision,
                    split, metrics["sampled"]["nll"], plan.samples)  # fmt: skip
    chosen = min(range(len(scored)), key=lambda i: (scored[i]["sampled"]["nll"], i))
    return chosen, {"split": split, "examples": len(examples), "metric": "nll of the sampled predictive",
                    "samples": plan.samples, "seed": plan.seed, "candidates": scored, "chosen": chosen}  # fmt: skip


def refine_run(config: RefineConfig):
    """Refine the posterior of `config.run_dir` into `config.out`; returns the refined `Posterior`."""
    from ..fileio import read_json
    from ..filenames import MERGE_NAME, POSTERIOR_CONFIG_NAME
    from ..output_dir import claim_output_dir, staged_output_dir
    from ..errors import UsageError
    from ..objectives import get_objective
    from ..posterior import adapter_hash
    from ..rundir import copy_run_files, describe_run, optimizer_name
    from ._choice_data import choice_task, labelled_split

    described = describe_run(config.run_dir, set())
    recipe = described["recipe"]
    if not described["has_posterior"]:
        if os.path.isfile(os.path.join(config.run_dir, MERGE_NAME)):
            raise UsageError(f"{config.run_dir} is a merge without a posterior: refine keeps a posterior's mean and "
                             "re-estimates its precision; refine the runs it merged")  # fmt: skip
        optimizer = optimizer_name(recipe) if recipe else "unknown"
        raise UsageError(f"{config.run_dir} was trained with {optimizer}, not IVON: it has no posterior (ess, prior) "
                         "whose precision refine could re-estimate")  # fmt: skip
    posterior_config = read_json(os.path.join(config.run_dir, POSTERIOR_CONFIG_NAME))
    if posterior_config.get("pruning") or posterior_config.get("temperature") not in (None, 1.0):
        raise UsageError(f"{config.run_dir} holds a pruned or tempered posterior: refine the run it was derived from")
    if recipe is not None and get_objective(recipe.objective).eval_kind != "multiple_choice":
        raise UsageError(f"{config.run_dir} is an objective: {recipe.objective} run: refine measures the curvature "
                         "of the multiple-choice objective")  # fmt: skip
    esses = [float(value) for value in config.ess] if config.ess else [posterior_config.get("ess")]
    if not esses[0]:
        raise UsageError(f"{config.run_dir} records one ess per parameter group: pass --ess")
    grid = [(ess, prior) for ess in esses for prior in _prior_precisions(config, posterior_config, config.run_dir)]
    task_name, task = choice_task(config.task, recipe, config.run_dir, "refine")
    plan = _selection_plan(config, task, task_name) if len(grid) > 1 else None
    claim_output_dir(config.out, "refine", config.overwrite, {"run dir": config.run_dir})
    loaded = labelled_split(task, task_name, config.split, config.file, config.limit, recipe,
                            "the curvature of the training loss")  # fmt: skip
    held_out = labelled_split(task, task_name, config.select_split, None, None, recipe,
                              "choosing the scale by NLL") if plan else None  # fmt: skip

    from ..choice import format_examples
    from ..choice.curvature import choice_curvature
    from ..curvature import refined
    from ..rundir import environment, load_run

    run = load_run(described["dir"])
    examples = format_examples(loaded.examples, tokenizer=run.tokenizer, model_args=run.model_args)
    curvature = choice_curvature(run.model, run.tokenizer, examples, run.posterior, method=config.method,
                                 samples=config.samples, batch_size=config.batch_size,
                                 max_length=getattr(run.recipe.data, "max_length", None) if run.recipe else None,
                                 seed=config.seed, progress=True)  # fmt: skip
    record = {"method": config.method, "samples": config.samples if config.method != "ggn" else None,
              "seed": config.seed if config.method != "ggn" else None, "task": task_name, "split": config.split,
              "file": config.file, "limit": config.limit, "examples": len(examples),
              "source": {"run_dir": described["dir"], "adapter_sha256": adapter_hash(run.posterior.mean)},
              "environment": environment()}  # fmt: skip
    chosen = 0
    if plan is not None:
        chosen, record["selection"] = _choose(
            plan, run, held_out.examples, grid,
            lambda ess, prior: refined(run.posterior, curvature, float(ess), prior, record), config.select_split,
        )  # fmt: skip
    ess, prior_precision = grid[chosen]
    result = refined(run.posterior, curvature, float(ess), prior_precision, record)
    with staged_output_dir(config.out, "refine") as staging:
        copy_run_files(described["dir"], staging)
        result.save(staging, include_mean=True)
    logger.info("refined the posterior of %s by %s on %d %s examples -> %s", config.run_dir, config.method,
                len(examples), config.split, config.out)  # fmt: skip
    return result
