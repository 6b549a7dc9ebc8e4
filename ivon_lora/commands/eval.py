"""`ivon-lora eval`: run dir(s) -> predictive metrics per task, at the mean and over samples, plus report files.

One command evaluates an IVON run (posterior mean and S posterior samples, optionally pruned / tempered, or a
pruning-temperature sweep chosen on a held-out split) on one or more tasks, and optionally a baseline run
(e.g. AdamW: at its weights and with MC-dropout samples) side by side under the same protocol. Output dir:
eval.json (everything, with protocol and versions), eval.md (table), predictions-TASK-RUN.jsonl (per-example
probabilities), reliability-TASK.png, selective-TASK.png and, for sweeps, tradeoff.png.
"""

from __future__ import annotations

import functools
import gc
import logging
import os

from .cli import UsageError
from .evaluation.predict import predict, protocol
from .evaluation.report import markdown_table, sweep_table, write_task_files
from .evaluation.sweep import plot_tradeoff, sweep_posterior
from .objective import format_examples
from .posterior import ADAPTER_CONFIG_NAME, POSTERIOR_WEIGHTS_NAME
from .recipe import load_recipe
from .run import check_new_output_dir, find_recipe, load_run, staged_output_dir
from .tasks import get_protocol, get_task, load_split
from .train import environment, write_json_atomic

logger = logging.getLogger(__name__)

REPORT_NAME = "eval.json"
TABLE_NAME = "eval.md"
TRADEOFF_PLOT_NAME = "tradeoff.png"


def _optimizer_name(recipe) -> str:
    optim = recipe.training.optim
    return getattr(optim, "value", optim)  # transformers' optimizer names are enum members


def _run_label(run_dir: str, recipe, has_posterior: bool) -> str:
    if recipe is not None:
        return _optimizer_name(recipe)
    return "ivon" if has_posterior else os.path.basename(os.path.normpath(run_dir))


def _describe_run(run_dir: str, taken: set) -> dict:
    """What a run dir is, checked before any model loads: label, recipe, whether it has a posterior."""
    if not os.path.isfile(os.path.join(run_dir, ADAPTER_CONFIG_NAME)):
        raise FileNotFoundError(f"{run_dir!r} is not a run or checkpoint dir: {ADAPTER_CONFIG_NAME} is missing")
    recipe_path = find_recipe(run_dir)
    recipe = load_recipe(recipe_path, check_output_dir=False) if recipe_path else None
    has_posterior = os.path.isfile(os.path.join(run_dir, POSTERIOR_WEIGHTS_NAME))
    label = _run_label(run_dir, recipe, has_posterior)
    if label in taken:
        label = f"{label} (baseline)"
    return {"dir": os.path.abspath(run_dir), "label": label, "recipe": recipe, "has_posterior": has_posterior}


def run_eval(options) -> dict:
    sweeping = len(options.prune_fractions) * len(options.temperatures) > 1 or options.select_split is not None
    if sweeping and options.select_split is None:
        raise UsageError("A sweep chooses its configuration on a held-out split: pass --select-split")

    # Everything that can be wrong with the options is checked before a model loads.
    main = _describe_run(options.run_dir, set())
    baseline = _describe_run(options.baseline, {main["label"]}) if options.baseline else None
    recipe = main["recipe"]
    preset = get_protocol(options.protocol or (recipe.run.protocol if recipe else "ivon-lora"))
    tasks = options.task or ([recipe.data.dataset] if recipe else None)
    if not tasks:
        raise UsageError(f"{options.run_dir} has no recipe.yaml naming its task: pass --task")
    if (options.file or sweeping) and len(tasks) > 1:
        raise UsageError("--file and sweeps take a single --task")
    split = options.split or (recipe.data.eval_split if recipe and tasks == [recipe.data.dataset] else preset.report_split)
    num_samples = preset.num_samples if options.samples is None else options.samples
    ece_bins = sorted(set(options.ece_bins) | {preset.ece_bins})
    out = options.out or os.path.join(options.run_dir, f"eval-{split}")
    check_new_output_dir(out, options.overwrite)
    if sweeping and options.select_split == split:
        raise UsageError(f"--select-split {split!r} is the reported split: choose on a different one")
    if not main["has_posterior"] and (sweeping or options.prune_fractions != [0.0] or options.temperatures != [1.0]):
        raise UsageError(f"{options.run_dir} has no posterior (not an IVON run): pruning and temperature need one")
    loaded = {task: load_split(task, split, options.file, options.limit, protocol=preset) for task in tasks}
    select_split = (
        load_split(tasks[0], options.select_split, options.select_file, options.limit, protocol=preset)
        if sweeping else None
    )  # fmt: skip

    prune_options = {"scope": options.prune_scope, "mode": options.prune_mode, "criterion": options.prune_criterion}
    evaluate_options = {"batch_size": options.batch_size, "seed": options.seed}
    result = {"tasks": {task: {"split": split, "num_examples": len(part.examples), "task": get_task(task).as_dict(),
                               "data": part.as_dict()} for task, part in loaded.items()}}  # fmt: skip
    predictions = {task: {} for task in tasks}
    runs = {}
    for described in (main, baseline):
        if described is None:
            continue
        run = load_run(described["dir"])
        max_length = run.recipe.data.max_length if run.recipe else None
        # The prompts as this run's model was trained on them (chat template or plain, answer spelling).
        formatted = functools.partial(format_examples, tokenizer=run.tokenizer, model_args=run.model_args)

        posterior, samples_of = run.posterior, "posterior"
        if posterior is None:
            samples_of = "mc_dropout"
            described_samples = options.mc_dropout_samples
        else:
            described_samples = num_samples
            if described is main and sweeping:
                sweep = sweep_posterior(
                    run.model, run.tokenizer, posterior, formatted(select_split.examples),
                    formatted(loaded[tasks[0]].examples),
                    fractions=options.prune_fractions, temperatures=options.temperatures, prune_options=prune_options,
                    select_by=options.select_by, num_samples=num_samples, max_length=max_length, ece_bins=ece_bins,
                    **evaluate_options,
                )  # fmt: skip
                result["sweep"] = sweep
                chosen = sweep["configs"][sweep["chosen"]]
                fraction, temperature = chosen["fraction"], chosen["temperature"]
            else:
                fraction, temperature = options.prune_fractions[0], options.temperatures[0]
            posterior = posterior.at_test_time(fraction, temperature, **prune_options)
        label = described["label"]
        runs[label] = {
            "dir": described["dir"],
            "optimizer": _optimizer_name(run.recipe) if run.recipe else None,
            "samples": samples_of if described_samples else None,
            "num_samples": described_samples,
            **({"pruning": {"fraction": fraction, "temperature": temperature, **prune_options}}
               if run.posterior is not None else {}),
        }
        for task, part in loaded.items():
            logger.info("%s: %s %s (%d examples)", label, task, split, len(part.examples))
            predictions[task][label] = predict(
                run.model, run.tokenizer, formatted(part.examples), posterior=posterior, num_samples=described_samples,
                max_length=max_length, sample_kind=samples_of, **evaluate_options,
            )  # fmt: skip
            result["tasks"][task].setdefault("runs", {})[label] = predictions[task][label].metrics(ece_bins)
        del run
        gc.collect()

    result.update(
        runs=runs,
        protocol={
            **protocol(preset, num_samples, ece_bins),
            "selection": f"{options.select_by} of the sampled predictive on {options.select_split!r}" if sweeping else None,
        },
        environment=environment(),
    )
    with staged_output_dir(out) as staging:
        for task in tasks:
            result["tasks"][task]["files"] = write_task_files(
                staging, task, predictions[task], result["tasks"][task]["runs"], preset.ece_bins
            )
        write_json_atomic(os.path.join(staging, REPORT_NAME), result)
        table = markdown_table(result["tasks"])
        with open(os.path.join(staging, TABLE_NAME), "w") as f:
            f.write(table + (f"\n{sweep_table(result['sweep'])}\n" if sweeping else ""))
        if sweeping:
            plot_tradeoff(result["sweep"], os.path.join(staging, TRADEOFF_PLOT_NAME))
    for line in table.splitlines():
        logger.info("%s", line)
    logger.info("wrote %s", out)
    return result
