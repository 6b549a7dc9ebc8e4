"""`ivon-lora eval`: run dir(s) -> predictive metrics per task, at the mean and over samples, plus report files.

One command evaluates an IVON run (posterior mean and S posterior samples, optionally pruned / tempered, or a
pruning-temperature sweep chosen on a held-out split) on one or more tasks, and optionally a baseline run
(e.g. AdamW: at its weights and with MC-dropout samples) side by side under the same protocol. Output dir:
eval.json (everything, with protocol and versions), eval.md (table), predictions-TASK-RUN.jsonl (per-example
probabilities), reliability-TASK.png, selective-TASK.png and, for sweeps, tradeoff.png.

A generative task (`--task wordqa`, triviaqa, nq_open, gsm8k) gets the selective-generation report instead, from any
run dir, choice or SFT (`ivon_lora.evaluation.generative`): eval.json, eval.md, predictions-TASK-RUN.jsonl (answers,
scores, correctness per example) and selective-TASK.png.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os

from ._options import (
    add_config_arguments,
    add_output_arguments,
    add_trust_remote_code_argument,
    config_from_options,
    number_in,
)

logger = logging.getLogger(__name__)


def make_parser(subparsers) -> argparse.ArgumentParser:
    from ..vocabulary import (
        DEFAULT_ECE_BINS,
        DEFAULT_PRUNE_FRACTIONS,
        PRUNE_CRITERIA,
        PRUNE_MODES,
        PRUNE_SCOPES,
        selection_criteria,
    )

    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a run (and a baseline) at the mean and over samples on one or more tasks, optionally "
             "sweeping pruning/temperature.",
        description="Writes eval.json, eval.md, per-example predictions-TASK-RUN.jsonl, reliability-TASK.png, "
                    "selective-TASK.png and (sweeps) tradeoff.png to --out (default RUN_DIR/eval-SPLIT). Options "
                    "also come from a YAML CONFIG and key=value (keys: the flags with _ for -).",
    )  # fmt: skip
    add_config_arguments(parser, "RUN_DIR", "run, checkpoint or pruned dir")
    parser.add_argument("--task", nargs="+", help="task name(s), e.g. arc_challenge mmlu:college_physics "
                        "(default: the run's dataset)")  # fmt: skip
    parser.add_argument("--split", help="reported split (default: the run's eval_split, else the protocol's)")
    parser.add_argument("--file", help="local json/jsonl/parquet/csv records (file or dir) of --split, one --task")
    parser.add_argument("--protocol", help="protocol preset: ivon-lora or blob (default: the run's recipe)")
    parser.add_argument("--samples", type=int, help="posterior samples S (default: the protocol's, 10)")
    parser.add_argument("--batch-size", type=int, help="default 32")
    parser.add_argument("--limit", type=int, help="evaluate only the first N records of each split")
    parser.add_argument("--seed", type=int, help="seed of the samples (default 0)")
    parser.add_argument("--ece-bins", type=int, nargs="+", help=f"default {' '.join(map(str, DEFAULT_ECE_BINS))}")
    parser.add_argument("--baseline", help="a second run dir (e.g. AdamW) evaluated side by side")
    parser.add_argument("--mc-dropout-samples", type=int,
                        help="MC-dropout samples for runs without a posterior (default 0: weights only)")  # fmt: skip
    parser.add_argument("--sampling-temperature", type=number_in(0.0, float("inf"), low_inclusive=False),
                        help="generative tasks: temperature of the sampled answers of a run without posterior or "
                             "MC dropout (default 1)")  # fmt: skip
    parser.add_argument("--decoding", choices=("mean", "averaged"),
                        help="generative tasks: the chosen answer greedy at the posterior mean (default) or "
                             "posterior-averaged (each token the argmax of the S samples' mean distribution)")
    parser.add_argument("--prune-fractions", type=number_in(0.0, 1.0), nargs="+", help="default 0")
    parser.add_argument("--temperatures", type=number_in(0.0, float("inf"), low_inclusive=False), nargs="+",
                        help="default 1")  # fmt: skip
    parser.add_argument("--sweep", action="store_true", default=argparse.SUPPRESS,
                        help=f"sweep the fractions {', '.join(map(str, DEFAULT_PRUNE_FRACTIONS))}")  # fmt: skip
    parser.add_argument("--prune-scope", choices=PRUNE_SCOPES, help="default global")
    parser.add_argument("--prune-mode", choices=PRUNE_MODES, help="default zero")
    parser.add_argument("--prune-criterion", choices=PRUNE_CRITERIA, help="default snr")
    parser.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                        help="two or more run dirs (e.g. AdamW runs of different seeds) evaluated as a deep ensemble")
    parser.add_argument("--temperature-scaling", action="store_true", default=argparse.SUPPRESS,
                        help="add each run temperature-scaled: one T fitted by NLL on --select-split")
    parser.add_argument("--risk-averse", action="store_true", default=argparse.SUPPRESS,
                        help="add the risk-averse selector (mean - kappa*std over posterior samples) to posterior runs' "
                             "selective prediction, kappa chosen on --select-split")  # fmt: skip
    parser.add_argument("--select-split", help="held-out split that sweeps, temperature scaling and the risk-averse "
                        "selector fit on (never the reported split)")
    parser.add_argument("--select-file", help="local records of --select-split")
    parser.add_argument("--select-by", choices=list(selection_criteria()),
                        help="criterion of the choice, on the sampled predictive (default nll)")  # fmt: skip
    parser.add_argument("--lm-eval-tasks", nargs="+", help="instead of --task: lm-evaluation-harness multiple-choice "
                        "tasks (e.g. arc_easy,hellaswag), scored by lm-eval; needs ivon-lora[lm-eval]")  # fmt: skip
    parser.add_argument("--lm-eval-include-path", help="a dir of local lm-eval task YAMLs (lm-eval's --include_path)")
    add_output_arguments(parser)
    add_trust_remote_code_argument(parser)
    return parser


def config_from(options: argparse.Namespace):
    from ..config import EvalConfig

    return config_from_options(options, EvalConfig, "eval")


def main(config) -> int:
    if config.lm_eval_tasks:
        from ..integrations.lm_eval_report import run_lm_eval_report

        run_lm_eval_report(config)
        return 0
    run_eval(config)
    return 0


def task_kind(names: list[str]) -> str:
    """The kind of the tasks `names` (one kind per call); an unknown name or mixed kinds is a `UsageError`."""
    from ..errors import UsageError
    from ..tasks import get_task

    kinds = {}
    for name in names:
        try:
            kinds.setdefault(get_task(name).kind, []).append(name)
        except KeyError as error:
            raise UsageError(f"--task: {error.args[0]}") from None
    if len(kinds) > 1:
        raise UsageError("--task mixes " + " and ".join(f"{kind.replace('_', '-')} ({', '.join(tasks)})"
                                                        for kind, tasks in kinds.items()) + " tasks: evaluate each "
                         "kind in its own call")  # fmt: skip
    return next(iter(kinds))


def run_eval(options) -> dict:
    """Evaluate `options` (an `ivon_lora.config.EvalConfig`); returns what eval.json holds."""
    from ..artifacts import (
        REPORT_NAME,
        TABLE_NAME,
        TRADEOFF_PLOT_NAME,
        check_new_output_dir,
        staged_output_dir,
        write_json_atomic,
    )
    from ..choice import format_examples
    from ..choice.collator import count_truncated
    from ..errors import UsageError
    from ..evaluation.baselines import ensemble, fit_temperature, scaled_probs, temperature_scaled
    from ..evaluation.metrics import headline_metric
    from ..evaluation.plots import plot_tradeoff
    from ..evaluation.predict import predict, protocol
    from ..evaluation.report import markdown_table, report_notes, sweep_table, write_task_files
    from ..evaluation.risk_averse import risk_averse_lines
    from ..evaluation.sweep import sweep_posterior
    from ..continual import started_from
    from ..rundir import check_out_apart, describe_run, environment, load_run, optimizer_name
    from ..tasks import get_protocol, get_task, load_split
    from ..tasks.base import GENERATIVE

    sweeping = options.sweeping
    if sweeping and options.select_split is None:
        raise UsageError("A sweep chooses its configuration on a held-out split: pass --select-split")
    if options.temperature_scaling and options.select_split is None:
        raise UsageError("--temperature-scaling fits its temperature on a held-out split: pass --select-split")
    if options.risk_averse and options.select_split is None:
        raise UsageError("--risk-averse chooses its kappa on a held-out split: pass --select-split")

    # Everything that can be wrong with the options is checked before a model loads.
    trust = options.trust_remote_code  # the user's consent to a run's base-model code (rundir.check_remote_code)
    main = describe_run(options.run_dir, set(), trust)
    baseline = describe_run(options.baseline, {main["label"]}, trust) if options.baseline else None
    members = [describe_run(member, set(), trust) for member in options.ensemble or []]
    for described in (main, baseline):
        if described and not described["has_posterior"] and options.mc_dropout_samples and not described["dropout"]:
            raise UsageError(f"--mc-dropout-samples: {described['dir']} has no dropout (lora_dropout 0) to sample: "
                             "evaluate it without MC dropout (--mc-dropout-samples 0)")  # fmt: skip
    recipe = main["recipe"]
    if options.task and task_kind(options.task) == GENERATIVE:
        from ..evaluation.generative import run_generative_eval

        return run_generative_eval(options, [described for described in (main, baseline) if described])
    if options.decoding != "mean":
        raise UsageError("--decoding is for generative tasks (e.g. --task wordqa)")
    if recipe is not None and recipe.objective == "sft" and not options.task:
        from ..evaluation.sft import run_sft_eval

        return run_sft_eval(options, [described for described in (main, baseline) if described])
    preset = get_protocol(options.protocol or (recipe.run.protocol if recipe else "ivon-lora"))
    answer_scoring = _common_answer_scoring([main, baseline, *members])
    tasks = options.task or ([recipe.data.dataset] if recipe else None)
    if not tasks:
        raise UsageError(f"{options.run_dir} has no recipe.yaml naming its task: pass --task")
    task_kind(tasks)
    if (options.file or options.select_split) and len(tasks) > 1:
        raise UsageError("--file, sweeps and temperature scaling take a single --task")
    split = options.split or (recipe.data.eval_split if recipe and tasks == [recipe.data.dataset] else preset.report_split)
    num_samples = preset.num_samples if options.samples is None else options.samples
    ece_bins = sorted(set(options.ece_bins) | {preset.ece_bins})
    out = options.out or os.path.join(options.run_dir, f"eval-{split}")  # the one output inside an input: its own
    inputs = {"run dir": options.run_dir, "baseline": options.baseline,
              **{f"ensemble member {i + 1}": member for i, member in enumerate(options.ensemble or [])}}
    check_out_apart(out, inputs if options.out else {k: v for k, v in inputs.items() if k != "run dir"})
    check_new_output_dir(out, options.overwrite)
    if options.select_split == split:
        raise UsageError(f"--select-split {split!r} is the reported split: choose on a different one")
    if not main["has_posterior"] and (sweeping or options.prune_fractions != [0.0] or options.temperatures != [1.0]):
        raise UsageError(f"{options.run_dir} has no posterior (not an IVON run): pruning and temperature need one")
    loaded = {task: load_split(task, split, options.file, options.limit, protocol=preset) for task in tasks}
    select_split = (
        load_split(tasks[0], options.select_split, options.select_file, options.limit, protocol=preset)
        if options.select_split else None
    )  # fmt: skip

    prune_options = {"scope": options.prune_scope, "mode": options.prune_mode, "criterion": options.prune_criterion}
    evaluate_options = {"batch_size": options.batch_size, "seed": options.seed}
    result = {"tasks": {task: {"split": split, "num_examples": len(part.examples), "task": get_task(task).as_dict(),
                               "data": part.as_dict()} for task, part in loaded.items()}}  # fmt: skip
    predictions = {task: {} for task in tasks}
    held_out = {}  # run label -> its predictions at the weights on the selection split (temperature scaling)
    member_predictions = {task: [] for task in tasks}
    runs = {}
    for described, is_member in [(main, False), (baseline, False), *((m, True) for m in members)]:
        if described is None:
            continue
        run = load_run(described["dir"], trust)
        # An SFT run's recipe has no prompt max_length (its SFTConfig max_length is the sequence's): none then.
        max_length = getattr(run.recipe.data, "max_length", None) if run.recipe else None
        # The prompts as this run's model was trained on them (chat template or plain, answer spelling).
        formatted = functools.partial(format_examples, tokenizer=run.tokenizer, model_args=run.model_args)
        if is_member:  # scored at its weights only; combined after the loop
            for task, part in loaded.items():
                logger.info("ensemble member %s: %s %s", described["dir"], task, split)
                member_predictions[task].append(predict(run.model, run.tokenizer, formatted(part.examples),
                                                        num_samples=0, max_length=max_length, **evaluate_options))  # fmt: skip
            if options.temperature_scaling:
                held_out.setdefault("ensemble", []).append(predict(
                    run.model, run.tokenizer, formatted(select_split.examples), num_samples=0, max_length=max_length,
                    **evaluate_options))  # fmt: skip
            del run
            gc.collect()
            continue

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
                    ece_edges=preset.ece_edges,
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
            "optimizer": optimizer_name(run.recipe) if run.recipe else None,
            "samples": samples_of if described_samples else None,
            "num_samples": described_samples,
            **({"pruning": run.posterior.evaluation_record(fraction, temperature, **prune_options)}
               if run.posterior is not None else {}),
            **started_from(run),
        }
        for task, part in loaded.items():
            logger.info("%s: %s %s (%d examples)", label, task, split, len(part.examples))
            predictions[task][label] = predict(
                run.model, run.tokenizer, formatted(part.examples), posterior=posterior, num_samples=described_samples,
                max_length=max_length, sample_kind=samples_of, **evaluate_options,
            )  # fmt: skip
            result["tasks"][task].setdefault("runs", {})[label] = predictions[task][label].metrics(ece_bins, ece_edges=preset.ece_edges)
            # Prompts cut to the run's max_length (their middle): per run, as chat templates differ in length.
            result["tasks"][task].setdefault("truncated", {})[label] = count_truncated(
                run.tokenizer, formatted(part.examples), max_length, f"{label}: {task} {split}")
        if options.risk_averse and posterior is not None and described_samples:
            _add_risk_averse(result["tasks"][tasks[0]]["runs"][label], predictions[tasks[0]][label], run,
                             formatted(select_split.examples), posterior, options.select_split,
                             {"num_samples": described_samples, "max_length": max_length, **evaluate_options})
        if options.temperature_scaling:
            held_out[label] = predict(run.model, run.tokenizer, formatted(select_split.examples), posterior=posterior,
                                      num_samples=0, max_length=max_length, **evaluate_options)  # fmt: skip
        del run
        gc.collect()

    if members:
        runs["ensemble"] = {"dirs": [m["dir"] for m in members], "samples": "ensemble", "num_samples": len(members)}
        for task in tasks:
            predictions[task]["ensemble"] = ensemble(member_predictions[task])
            result["tasks"][task]["runs"]["ensemble"] = predictions[task]["ensemble"].metrics(ece_bins, ece_edges=preset.ece_edges)
        if options.temperature_scaling:
            held_out["ensemble"] = ensemble(held_out["ensemble"])
    for label, selection in held_out.items():
        task = tasks[0]
        temperature = fit_temperature(scaled_probs(selection), selection.gold)
        scaled = f"{label} + TS"
        predictions[task][scaled] = temperature_scaled(predictions[task][label], temperature)
        result["tasks"][task]["runs"][scaled] = predictions[task][scaled].metrics(ece_bins, ece_edges=preset.ece_edges)
        runs[scaled] = {"temperature_scaling": {"temperature": temperature, "fitted_on": options.select_split,
                                                "of": label, "criterion": "nll"}}  # fmt: skip

    result.update(
        runs=runs,
        protocol={
            **protocol(preset, num_samples, ece_bins, answer_scoring),
            "risk_averse": (f"kappa of mean - kappa * std chosen by AURC on {options.select_split!r} per posterior run"
                            if options.risk_averse else None),
            "selection": f"{options.select_by} of the sampled predictive on {options.select_split!r}" if sweeping else None,
            "temperature_scaling": (f"one temperature per run fitted by NLL on {options.select_split!r} (at the "
                                    "weights; an ensemble's averaged predictive), applied to the reported split"
                                    if options.temperature_scaling else None),
        },
        environment=environment(),
    )
    with staged_output_dir(out) as staging:
        for task in tasks:
            result["tasks"][task]["files"] = write_task_files(
                staging, task, predictions[task], result["tasks"][task]["runs"], preset.ece_bins, preset.ece_edges
            )
        write_json_atomic(os.path.join(staging, REPORT_NAME), result)
        table = markdown_table(result["tasks"], ece_bins)
        with open(os.path.join(staging, TABLE_NAME), "w") as f:
            f.write(table + (f"\n{sweep_table(result['sweep'], ece_bins)}\n" if sweeping else ""))
            f.write("\n" + report_notes(preset, result["tasks"]))
            f.write("".join(line + "\n" for line in risk_averse_lines(result["tasks"])))
        if sweeping:
            plot_tradeoff(result["sweep"], os.path.join(staging, TRADEOFF_PLOT_NAME), headline_metric(preset))
    for line in table.splitlines():
        logger.info("%s", line)
    logger.info("wrote %s", out)
    return result


def _common_answer_scoring(described_runs) -> str:
    """The answer scoring (letter / text / text_norm) of the runs compared side by side: one for all, checked before
    any model loads (a run without a recipe scores letters)."""
    from ..errors import UsageError

    scorings = {d["dir"]: (getattr(d["recipe"].model, "answer_scoring", "letter") if d["recipe"] else "letter")
                for d in described_runs if d}  # fmt: skip
    if len(set(scorings.values())) > 1:
        raise UsageError("The runs compared score their answers differently (answer_scoring: "
                         + ", ".join(f"{run}: {scoring}" for run, scoring in scorings.items())
                         + "): evaluate each in its own call")  # fmt: skip
    return next(iter(scorings.values()))


def _add_risk_averse(run_metrics: dict, reported, run, selection_examples, posterior, select_split: str,
                     predict_options: dict) -> None:  # fmt: skip
    """The risk-averse selector of one posterior run (`evaluation.risk_averse`) into its metrics: its samples on
    the selection split choose kappa, which is then applied to the reported split's samples `reported`."""
    from ..evaluation.predict import predict
    from ..evaluation.risk_averse import risk_averse_report

    selection = predict(run.model, run.tokenizer, selection_examples, posterior=posterior, **predict_options)
    run_metrics["risk_averse"] = risk_averse_report(selection, reported, select_split)
