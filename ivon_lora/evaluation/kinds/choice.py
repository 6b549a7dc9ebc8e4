"""Multiple-choice tasks: choice probabilities at the mean and over S posterior (or MC-dropout) samples, optionally
pruned / tempered or swept on a held-out split, beside a baseline, a deep ensemble and temperature-scaled runs
(`ivon_lora.evaluation`: predict, sweep, baselines, report)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .base import (
    PRUNING_OPTIONS,
    EvalKind,
    protocol_preset,
    register_kind,
    reported_ece_bins,
    run_record,
    task_kind,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoiceData:
    preset: object  # tasks.Protocol
    loaded: dict  # task -> its reported split (tasks.LoadedSplit)
    selection: object | None  # the --select-split of the first task, or None


@dataclass
class ChoiceScores:
    """One run's scores: its record, predictions and metrics per task; for temperature scaling its predictions at
    the weights on the selection split; a sweep's table (the main run's)."""

    record: dict
    predictions: dict = field(default_factory=dict)  # task -> Predictions
    metrics: dict = field(default_factory=dict)  # task -> metrics
    truncated: dict = field(default_factory=dict)  # task -> prompts cut to max_length
    held_out: object | None = None  # Predictions at the weights on the selection split (temperature scaling)
    sweep: dict | None = None
    member: bool = False


def max_length(run):
    # An SFT run's recipe has no prompt max_length (its SFTConfig max_length is the sequence's): none then.
    return getattr(run.recipe.data, "max_length", None) if run.recipe else None


def formatted(run, examples):
    from ...choice import format_examples

    # The prompts as this run's model was trained on them (chat template or plain, answer spelling).
    return format_examples(examples, tokenizer=run.tokenizer, model_args=run.model_args)


def predict_examples(plan, run, examples, **options):
    """The run's choice probabilities on formatted `examples` under the plan's batching and seed."""
    from ..predict import predict

    return predict(run.model, run.tokenizer, examples, max_length=max_length(run), batch_size=plan.batch_size,
                   seed=plan.seed, **options)  # fmt: skip


def score_split(plan, model, tokenizer, examples, posterior, max_length: int | None):
    """Choice probabilities of `model` on the formatted `examples` at the mean and with the plan's S samples of
    `posterior` (MC-dropout masks for a model without one when the plan asks for them): the one call through which
    `ivon-lora eval`, `train`'s final evaluation and the studies score a split."""
    from ..predict import predict

    if posterior is not None:
        num_samples, sample_kind = plan.samples, "posterior"
    else:
        num_samples, sample_kind = plan.mc_dropout_samples, "mc_dropout"
    batched = {"samples_per_pass": plan.samples_per_pass} if plan.samples_per_pass else {}
    return predict(model, tokenizer, examples, posterior=posterior, num_samples=num_samples, sample_kind=sample_kind,
                   batch_size=plan.batch_size, max_length=max_length, seed=plan.seed, **batched)  # fmt: skip


def split_metrics(plan, predictions, preset) -> dict:
    """The report's metrics of `predictions` under the plan's ECE bins and the preset's bin edges."""
    return predictions.metrics(list(plan.ece_bins), ece_edges=preset.ece_edges)


@register_kind
class ChoiceKind(EvalKind):
    name = "multiple_choice"
    description = "multiple-choice tasks"
    accepts = PRUNING_OPTIONS | {"task", "split", "file", "protocol", "ece_bins", "mc_dropout_samples", "sweep",
                                 "ensemble", "temperature_scaling", "risk_averse", "select_split", "select_file",
                                 "select_by", "samples_per_pass"}  # fmt: skip
    sweeps = True

    @classmethod
    def applies(cls, options, recipe) -> bool:
        from ...objectives import get_objective
        from ...tasks.base import MULTIPLE_CHOICE

        if options.lm_eval_tasks:
            return False
        if options.task:
            return task_kind(options.task) == MULTIPLE_CHOICE
        return recipe is None or get_objective(recipe.objective).eval_kind == cls.name

    @classmethod
    def describe(cls, options) -> str:
        return f"{cls.description} ({', '.join(options.task)})" if options.task else cls.description

    @classmethod
    def resolve(cls, options, described: list[dict]) -> dict:
        from ...errors import UsageError

        recipe = described[0]["recipe"]
        if options.sweeping and options.select_split is None:
            raise UsageError("A sweep chooses its configuration on a held-out split: pass --select-split")
        if options.temperature_scaling and options.select_split is None:
            raise UsageError("--temperature-scaling fits its temperature on a held-out split: pass --select-split")
        if options.risk_averse and options.select_split is None:
            raise UsageError("--risk-averse chooses its kappa on a held-out split: pass --select-split")
        answer_scoring = common_answer_scoring(described)
        preset = protocol_preset(options, recipe)
        tasks = options.task or ([recipe.data.dataset] if recipe else None)
        if not tasks:
            raise UsageError(f"{options.run_dir} has no recipe.yaml naming its task: pass --task")
        task_kind(tasks)
        if (options.file or options.select_split) and len(tasks) > 1:
            raise UsageError("--file, sweeps and temperature scaling take a single --task")
        own_task = recipe is not None and tasks == [recipe.data.dataset]
        split = options.split or (recipe.data.eval_split if own_task else preset.report_split)
        if options.select_split == split:
            raise UsageError(f"--select-split {split!r} is the reported split: choose on a different one")
        return {"tasks": tuple(tasks), "splits": (split,) * len(tasks), "protocol": preset.name,
                "ece_bins": reported_ece_bins(options.ece_bins, preset), "answer_scoring": answer_scoring,
                "out_name": split}  # fmt: skip

    @classmethod
    def load(cls, plan, described: list[dict]) -> ChoiceData:
        from ...tasks import get_protocol, load_split

        preset = get_protocol(plan.protocol)
        loaded = {task: load_split(task, split, plan.file, plan.limit, protocol=preset)
                  for task, split in zip(plan.tasks, plan.splits)}  # fmt: skip
        selection = (load_split(plan.tasks[0], plan.select_split, plan.select_file, plan.limit, protocol=preset)
                     if plan.select_split else None)  # fmt: skip
        return ChoiceData(preset, loaded, selection)

    @classmethod
    def score(cls, plan, data: ChoiceData, described: dict, run) -> ChoiceScores:
        from ...choice.collator import count_truncated
        from ...rundir import optimizer_name

        if described.get("member"):  # scored at its weights only; combined in `combine`
            scores = ChoiceScores(record={}, member=True)
            for task, part in data.loaded.items():
                logger.info("ensemble member %s: %s %s", described["dir"], task, part.split)
                scores.predictions[task] = predict_examples(plan, run, formatted(run, part.examples), num_samples=0)
            if plan.temperature_scaling:
                scores.held_out = predict_examples(plan, run, formatted(run, data.selection.examples), num_samples=0)
            return scores
        sweep = None
        if run.posterior is None:
            posterior, pruning = None, {"fraction": 0.0, "temperature": 1.0}
        else:
            if described["label"] == plan.labels[0] and plan.sweeping:
                sweep = sweep_of(plan, data, run)
                chosen = sweep["configs"][sweep["chosen"]]
                fraction, temperature = chosen["fraction"], chosen["temperature"]
            else:
                fraction, temperature = plan.test_time
            pruning = {"fraction": fraction, "temperature": temperature, **plan.prune_options()}
            posterior = run.posterior.at_test_time(fraction, temperature, **plan.prune_options())
        num_samples, sample_kind = ((plan.samples, "posterior") if posterior is not None
                                    else (plan.mc_dropout_samples, "mc_dropout"))  # fmt: skip
        label = described["label"]
        record = {"dir": described["dir"], "optimizer": optimizer_name(run.recipe) if run.recipe else None,
                  "samples": num_samples, "sample_kind": sample_kind if num_samples else None,
                  **run_record(run, posterior, **pruning)}  # fmt: skip
        scores = ChoiceScores(record=record, sweep=sweep)
        for task, part in data.loaded.items():
            logger.info("%s: %s %s (%d examples)", label, task, part.split, len(part.examples))
            examples = formatted(run, part.examples)
            scores.predictions[task] = score_split(plan, run.model, run.tokenizer, examples, posterior, max_length(run))
            scores.metrics[task] = split_metrics(plan, scores.predictions[task], data.preset)
            # Prompts cut to the run's max_length (their middle): per run, as chat templates differ in length.
            scores.truncated[task] = count_truncated(run.tokenizer, examples, max_length(run),
                                                     f"{label}: {task} {part.split}")  # fmt: skip
        first = plan.tasks[0]
        if plan.risk_averse and posterior is not None and num_samples:
            from ..risk_averse import risk_averse_report

            # The same run's samples on the selection split choose kappa, applied to the first task's samples.
            selection = score_split(
                plan, run.model, run.tokenizer, formatted(run, data.selection.examples), posterior, max_length(run)
            )
            scores.metrics[first]["risk_averse"] = risk_averse_report(selection, scores.predictions[first],
                                                                      plan.select_split)  # fmt: skip
        if plan.temperature_scaling:
            scores.held_out = predict_examples(plan, run, formatted(run, data.selection.examples),
                                               posterior=posterior, num_samples=0)  # fmt: skip
        return scores

    @classmethod
    def combine(cls, plan, data: ChoiceData, scores: dict) -> dict:
        from ..baselines import ensemble, fit_temperature, scaled_probs, temperature_scaled

        members = [s for s in scores.values() if s.member]
        combined = {label: s for label, s in scores.items() if not s.member}
        if members:
            dirs = [plan.ensemble[i] for i in range(len(members))]
            entry = ChoiceScores(record={"dirs": [os.path.abspath(d) for d in dirs], "samples": len(members),
                                         "sample_kind": "ensemble"})  # fmt: skip
            for task in plan.tasks:
                entry.predictions[task] = ensemble([m.predictions[task] for m in members])
                entry.metrics[task] = split_metrics(plan, entry.predictions[task], data.preset)
            if plan.temperature_scaling:
                entry.held_out = ensemble([m.held_out for m in members])
            combined["ensemble"] = entry
        if plan.temperature_scaling:
            task = plan.tasks[0]
            for label, entry in list(combined.items()):
                temperature = fit_temperature(scaled_probs(entry.held_out), entry.held_out.gold)
                scaled = ChoiceScores(record={"temperature_scaling": {"temperature": temperature,
                                                                      "fitted_on": plan.select_split, "of": label,
                                                                      "criterion": "nll"}})  # fmt: skip
                scaled.predictions[task] = temperature_scaled(entry.predictions[task], temperature)
                scaled.metrics[task] = split_metrics(plan, scaled.predictions[task], data.preset)
                combined[f"{label} + TS"] = scaled
        return combined

    @classmethod
    def report(cls, plan, data: ChoiceData, scores: dict) -> dict:
        from ...tasks import get_task

        tasks = {}
        for task, part in data.loaded.items():
            entry = {"split": part.split, "num_examples": len(part.examples), "task": get_task(task).as_dict(),
                     "data": part.as_dict(), "runs": {label: s.metrics[task] for label, s in scores.items()}}  # fmt: skip
            truncated = {label: s.truncated[task] for label, s in scores.items() if task in s.truncated}
            if truncated:
                entry["truncated"] = truncated
            tasks[task] = entry
        result = {"tasks": tasks}
        sweep = next((s.sweep for s in scores.values() if s.sweep is not None), None)
        if sweep is not None:
            result["sweep"] = sweep
        return {**result, "runs": {label: s.record for label, s in scores.items()}}

    @classmethod
    def protocol(cls, plan, data: ChoiceData) -> dict:
        from ..predict import protocol

        return {
            **protocol(data.preset, plan.samples, plan.ece_bins, plan.answer_scoring),
            "risk_averse": (f"kappa of mean - kappa * std chosen by AURC on {plan.select_split!r} per posterior run"
                            if plan.risk_averse else None),
            "selection": (f"{plan.select_by} of the sampled predictive on {plan.select_split!r}"
                          if plan.sweeping else None),
            "temperature_scaling": (f"one temperature per run fitted by NLL on {plan.select_split!r} (at the "
                                    "weights; an ensemble's averaged predictive), applied to the reported split"
                                    if plan.temperature_scaling else None),
            **({"samples_per_pass": f"{plan.samples_per_pass} posterior samples per forward pass (one LoRA delta "
                                    "per sample on a stacked batch)"} if plan.samples_per_pass else {}),
        }  # fmt: skip

    @classmethod
    def write_files(cls, plan, data: ChoiceData, scores: dict, staging: str, result: dict) -> None:
        from ...filenames import TRADEOFF_PLOT_NAME
        from ..metrics import headline_metric
        from ..plots import plot_tradeoff
        from ..report import write_task_files

        preset = data.preset
        for task in plan.tasks:
            predictions = {label: s.predictions[task] for label, s in scores.items()}
            result["tasks"][task]["files"] = write_task_files(
                staging, task, predictions, result["tasks"][task]["runs"], preset.ece_bins, preset.ece_edges
            )
        if plan.sweeping:
            plot_tradeoff(result["sweep"], os.path.join(staging, TRADEOFF_PLOT_NAME), headline_metric(preset))

    @classmethod
    def tables(cls, plan, data: ChoiceData, result: dict) -> tuple[str, str]:
        from ..report import markdown_table, report_notes, sweep_table
        from ..risk_averse import risk_averse_lines

        table = markdown_table(result["tasks"], plan.ece_bins)
        sweep = f"\n{sweep_table(result['sweep'], plan.ece_bins)}\n" if plan.sweeping else ""
        risk_averse = "".join(line + "\n" for line in risk_averse_lines(result["tasks"]))
        return table, table + sweep + "\n" + report_notes(data.preset, result["tasks"]) + risk_averse


def sweep_of(plan, data: ChoiceData, run) -> dict:
    """The pruning x temperature sweep of the main run, chosen on the selection split."""
    from ..sweep import sweep_posterior

    return sweep_posterior(
        run.model, run.tokenizer, run.posterior, formatted(run, data.selection.examples),
        formatted(run, data.loaded[plan.tasks[0]].examples), fractions=list(plan.prune_fractions),
        temperatures=list(plan.temperatures), prune_options=plan.prune_options(), select_by=plan.select_by,
        num_samples=plan.samples, max_length=max_length(run), ece_bins=list(plan.ece_bins),
        ece_edges=data.preset.ece_edges, batch_size=plan.batch_size, seed=plan.seed,
    )  # fmt: skip


def common_answer_scoring(described_runs) -> str:
    """The answer scoring (letter / text / text_norm) of the runs compared side by side: one for all, checked before
    any model loads (a run without a recipe scores letters)."""
    from ...errors import UsageError

    scorings = {d["dir"]: (getattr(d["recipe"].model, "answer_scoring", "letter") if d["recipe"] else "letter")
                for d in described_runs}  # fmt: skip
    if len(set(scorings.values())) > 1:
        raise UsageError("The runs compared score their answers differently (answer_scoring: "
                         + ", ".join(f"{run}: {scoring}" for run, scoring in scorings.items())
                         + "): evaluate each in its own call")  # fmt: skip
    return next(iter(scorings.values()))
