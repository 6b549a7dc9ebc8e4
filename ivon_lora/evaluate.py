"""`ivon-lora eval`: a run dir -> predictive metrics at the mean and over posterior samples, or a sweep."""

from __future__ import annotations

import logging
import os

from .cli import UsageError
from .evaluation.metrics import MARKDOWN_HEADER, markdown_cells
from .evaluation.predict import evaluate_predictive, protocol
from .evaluation.sweep import plot_tradeoff, predictive_metrics, sweep_posterior
from .posterior import POSTERIOR_WEIGHTS_NAME
from .recipe import load_recipe
from .run import check_new_output_dir, find_recipe, load_run, staged_output_dir
from .tasks import load_examples
from .train import environment, write_json_atomic

logger = logging.getLogger(__name__)

REPORT_NAME = "eval.json"
TABLE_NAME = "eval.md"
TRADEOFF_PLOT_NAME = "tradeoff.png"


def _table(result: dict) -> str:
    lines = [f"| fraction | temperature | split | predictive | {MARKDOWN_HEADER} |", "|---" * 9 + "|"]
    for index, config in enumerate(result["configs"]):
        mark = " (chosen)" if index == result.get("chosen") else ""
        for role in ("select", "report"):
            if role not in config:
                continue
            for name, m in (("mean", config[role]["mean"]), ("sampled", config[role].get("sampled"))):
                if m is None:
                    continue
                lines.append(
                    f"| {config['fraction']:g}{mark} | {config['temperature']:g} | {result['splits'][role]} | {name} | "
                    f"{markdown_cells(m)} |"
                )
    return "\n".join(lines) + "\n"


def run_eval(options) -> dict:
    sweeping = len(options.prune_fractions) * len(options.temperatures) > 1 or options.select_split is not None
    if sweeping and options.select_split is None:
        raise UsageError("A sweep chooses its configuration on a held-out split: pass --select-split")

    # Everything that can be wrong with the options is checked before the model loads.
    recipe_path = find_recipe(options.run_dir)
    recipe = load_recipe(recipe_path, check_output_dir=False) if recipe_path else None
    task = options.task or (recipe.data.dataset if recipe else None)
    split = options.split or (recipe.data.eval_split if recipe else "validation")
    if task is None:
        raise UsageError(f"{options.run_dir} has no recipe.yaml naming its task: pass --task")
    out = options.out or os.path.join(options.run_dir, f"eval-{split}")
    check_new_output_dir(out, options.overwrite)
    if sweeping and options.select_split == split:
        raise UsageError(f"--select-split {split!r} is the reported split: choose on a different one")
    has_posterior = os.path.isfile(os.path.join(options.run_dir, POSTERIOR_WEIGHTS_NAME))
    if not has_posterior and (sweeping or options.prune_fractions != [0.0] or options.temperatures != [1.0]):
        raise UsageError(f"{options.run_dir} has no posterior (not an IVON run): pruning and temperature need one")
    report_examples = load_examples(task, split, options.file, options.limit)
    select_examples = load_examples(task, options.select_split, options.select_file, options.limit) if sweeping else None

    prune_options = dict(scope=options.prune_scope, mode=options.prune_mode, criterion=options.prune_criterion)
    run = load_run(options.run_dir)
    evaluate_options = dict(
        num_samples=options.samples if run.posterior is not None else 0,
        batch_size=options.batch_size,
        max_length=run.recipe.data.max_length if run.recipe else None,
        seed=options.seed,
        ece_bins=options.ece_bins,
    )
    if sweeping:
        result = sweep_posterior(
            run.model, run.tokenizer, run.posterior, select_examples, report_examples,
            fractions=options.prune_fractions, temperatures=options.temperatures,
            prune_options=prune_options, select_by=options.select_by, **evaluate_options,
        )  # fmt: skip
    else:
        fraction, temperature = options.prune_fractions[0], options.temperatures[0]
        posterior = None if run.posterior is None else run.posterior.at_test_time(fraction, temperature, **prune_options)
        metrics = evaluate_predictive(run.model, run.tokenizer, report_examples, posterior=posterior, **evaluate_options)
        result = {"configs": [{"fraction": fraction, "temperature": temperature, "report": metrics}]}
    result.update(
        task=task,
        splits={"report": split, **({"select": options.select_split} if sweeping else {})},
        run_dir=os.path.abspath(options.run_dir),
        protocol={
            **protocol(evaluate_options["num_samples"], options.ece_bins),
            "selection": f"{options.select_by} of the sampled predictive on the select split" if sweeping else None,
            "pruning": prune_options,
        },
        environment=environment(),
    )
    with staged_output_dir(out) as staging:
        write_json_atomic(os.path.join(staging, REPORT_NAME), result)
        with open(os.path.join(staging, TABLE_NAME), "w") as f:
            f.write(_table(result))
        if sweeping:
            plot_tradeoff(result, os.path.join(staging, TRADEOFF_PLOT_NAME))
    chosen = result["configs"][result.get("chosen", 0)]
    logger.info("%s %s: fraction %g temperature %g -> %s", task, split, chosen["fraction"], chosen["temperature"],
                {k: round(v, 4) for k, v in predictive_metrics(chosen["report"]).items()})  # fmt: skip
    logger.info("wrote %s", out)
    return result
