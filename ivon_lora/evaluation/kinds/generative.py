"""Generative tasks (wordqa, triviaqa, nq_open, gsm8k): the selective-generation report of any run dir, choice or
SFT (`ivon_lora.evaluation.generative`): each question's chosen answer, its confidence scores and how well each
score ranks the correct answers above the wrong ones."""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass

from .base import PRUNING_OPTIONS, EvalKind, register_kind, run_record, task_kind, test_time_posterior

logger = logging.getLogger(__name__)

PROTOCOL = {
    "kind": "generative",
    "decoding": "chosen answer: greedy at the posterior mean (at the weights without a posterior), or with decoding "
                "'averaged' the argmax of the S posterior samples' mean next-token distribution at each step; at "
                "most the task's max_new_tokens, cut at its first stop string",
    "sampled_answers": "S answers, one per posterior sample (else per MC-dropout mask, else temperature sampling at "
                       "the weights without top-k/top-p), cut likewise; seeded by the seed",
    "scoring": "teacher-forced prompt + chosen answer + what ended it (the stop string's tokens or EOS; nothing when "
               "the token budget ran out), at the mean and under each posterior / MC-dropout sample (the same "
               "posterior draws as the decoding's)",
}  # fmt: skip


def prompt_rendering(recipe) -> tuple[bool, str]:
    """Whether a run read its prompts through the chat template, and how that was decided (its objective's rule,
    e.g. `prompt_format: chat`, or an SFT run's conversational train data); a run without recipe: plain prompts."""
    from ...objectives import get_objective

    if recipe is None:
        return False, "no recipe"
    return get_objective(recipe.objective).part("prompt_rendering")(recipe)


def json_safe(value):
    """NaN (an undefined metric; its reason is under "undefined") as JSON null; everything else as is."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


@dataclass(frozen=True)
class GenerativeData:
    tasks: dict  # name -> tasks.GenerativeTask
    loaded: dict  # name -> its reported split
    rendering: dict  # run label -> (chat template?, why)


@dataclass(frozen=True)
class GenerativeScores:
    record: dict
    evaluations: dict  # task -> evaluation.generative.GenerativeEvaluation


@register_kind
class GenerativeKind(EvalKind):
    name = "generative"
    description = "generative tasks"
    accepts = PRUNING_OPTIONS | {"task", "split", "file", "ece_bins", "mc_dropout_samples", "decoding",
                                 "sampling_temperature"}  # fmt: skip

    @classmethod
    def applies(cls, options, recipe) -> bool:
        from ...tasks.base import GENERATIVE

        return not options.lm_eval_tasks and bool(options.task) and task_kind(options.task) == GENERATIVE

    @classmethod
    def describe(cls, options) -> str:
        return f"generative ones ({', '.join(options.task)})"

    @classmethod
    def resolve(cls, options, described: list[dict]) -> dict:
        from ...errors import UsageError
        from ...tasks import get_task

        recipe = described[0]["recipe"]
        tasks = {name: get_task(name) for name in options.task}
        if options.file and len(tasks) > 1:
            raise UsageError("--file takes a single --task")
        splits = []
        for name, task in tasks.items():
            split = options.split or (recipe.data.eval_split if recipe is not None and recipe.data.dataset == name
                                      else None)  # fmt: skip
            split = split or next((name for name in ("validation", "test") if name in task.splits), None)
            if split not in task.splits:
                raise UsageError(f"--split: task {name!r} has no split {split!r}; available: {', '.join(task.splits)}")
            splits.append(split)
        return {"tasks": tuple(tasks), "splits": tuple(splits), "ece_bins": tuple(options.ece_bins),
                "out_name": splits[0]}  # fmt: skip

    @classmethod
    def load(cls, plan, described: list[dict]) -> GenerativeData:
        from ...errors import UsageError
        from ...tasks import get_task, load_generative_split

        loaded = {name: load_generative_split(name, split, plan.file, plan.limit)
                  for name, split in zip(plan.tasks, plan.splits)}  # fmt: skip
        for part in loaded.values():
            if not part.examples:
                raise UsageError(f"{part.summary()}: no example to evaluate")
        rendering = {d["label"]: prompt_rendering(d["recipe"]) for d in described}
        return GenerativeData({name: get_task(name) for name in plan.tasks}, loaded, rendering)

    @classmethod
    def score(cls, plan, data: GenerativeData, described: dict, run) -> GenerativeScores:
        from ...rundir import optimizer_name
        from ..generative import decode_answers, evaluate_generative, sampling_for

        label = described["label"]
        posterior = test_time_posterior(plan, run)
        chat, why = data.rendering[label]
        sampling = sampling_for(posterior is not None, plan.samples, plan.mc_dropout_samples,
                                plan.sampling_temperature)  # fmt: skip
        chosen = plan.decoding if sampling.kind == "posterior" else "mean"  # averaging needs posterior samples
        record = {
            "decoding": chosen,
            "dir": described["dir"], "objective": run.recipe.objective if run.recipe else None,
            "optimizer": optimizer_name(run.recipe) if run.recipe else None,
            "prompts": f"{'chat template (question as the user message)' if chat else 'plain task prompt'} ({why})",
            "samples": sampling.num_samples, "sample_kind": sampling.kind, "sampling": sampling.describe(),
            **({"sampling_temperature": sampling.temperature} if sampling.kind == "temperature" else {}),
            **run_record(run, posterior, *plan.test_time),
        }  # fmt: skip
        evaluations = {}
        for name, part in data.loaded.items():
            logger.info("%s: %s %s (%d examples, %s)", label, name, part.split, len(part.examples),
                        sampling.describe())  # fmt: skip
            evaluations[name] = evaluate_generative(run.model, run.tokenizer, part.examples, data.tasks[name],
                                                    chat=chat, posterior=posterior, sampling=sampling, seed=plan.seed,
                                                    batch_size=plan.batch_size,
                                                    decode=functools.partial(decode_answers, chosen=chosen))  # fmt: skip
        return GenerativeScores(record, evaluations)

    @classmethod
    def report(cls, plan, data: GenerativeData, scores: dict) -> dict:
        tasks = {name: {"split": split, "num_examples": len(data.loaded[name].examples),
                        "task": data.tasks[name].as_dict(), "data": data.loaded[name].as_dict(),
                        "runs": {label: s.evaluations[name].metrics(list(plan.ece_bins))
                                 for label, s in scores.items()}}
                 for name, split in zip(plan.tasks, plan.splits)}  # fmt: skip
        return {"tasks": tasks, "runs": {label: s.record for label, s in scores.items()}}

    @classmethod
    def protocol(cls, plan, data: GenerativeData) -> dict:
        from ..uncertainty import CONFIDENCE_SCORES

        return {
            **PROTOCOL,
            "scores": {name: score.description for name, score in CONFIDENCE_SCORES.items()},
            "correctness": {name: task.judge.name for name, task in data.tasks.items()},
            "samples": plan.samples, "mc_dropout_samples": plan.mc_dropout_samples,
            "sampling_temperature": plan.sampling_temperature, "seed": plan.seed,
            "ece": "equal-width bins on the score as a probability, (lo, hi]; only scores that are probabilities",
            "ece_bins": list(plan.ece_bins),
            "selective": "accept from the most confident down; coverage at risk = largest coverage with "
                         "1 - accuracy <= r; AUROC and PRR null (reason under undefined) when all answers are "
                         "correct or all wrong",
            "units": "fractions (x100 for papers' tables)",
        }  # fmt: skip

    @classmethod
    def json_ready(cls, result: dict) -> dict:
        return json_safe(result)

    @classmethod
    def write_files(cls, plan, data: GenerativeData, scores: dict, staging: str, result: dict) -> None:
        from ...filenames import predictions_file_name, selective_plot_name
        from ..plots import plot_selective_generation
        from ..report import write_jsonl

        for name, split in zip(plan.tasks, plan.splits):
            files = {}
            for label, scored in scores.items():
                files[f"predictions_{label}"] = predictions_file_name(name, label)
                write_jsonl(os.path.join(staging, files[f"predictions_{label}"]),
                            map(json_safe, scored.evaluations[name].rows()))  # fmt: skip
            files["selective"] = selective_plot_name(name)
            plot_selective_generation(f"{name} {split}", result["tasks"][name]["runs"],
                                      os.path.join(staging, files["selective"]))  # fmt: skip
            result["tasks"][name]["files"] = files

    @classmethod
    def tables(cls, plan, data: GenerativeData, result: dict) -> tuple[str, str]:
        from ..report import generation_table

        table = generation_table(result["tasks"], list(plan.ece_bins))
        notes = "".join(f"- {label}: {run['prompts']}; sampled answers: {run['sampling']}.\n"
                        for label, run in result["runs"].items())  # fmt: skip
        return table, table + notes
