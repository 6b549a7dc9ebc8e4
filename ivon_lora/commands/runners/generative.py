"""Generative tasks (wordqa, triviaqa, nq_open, gsm8k): the selective-generation report of any run dir, choice or
SFT (`ivon_lora.evaluation.generative`): each question's chosen answer, its confidence scores and how well each
score ranks the correct answers above the wrong ones."""

from __future__ import annotations

import functools
import logging
import math
import os

from .base import PRUNING_OPTIONS, Runner, register_runner, task_kind

logger = logging.getLogger(__name__)

PROTOCOL = {
    "kind": "generative",
    "decoding": "chosen answer: greedy at the posterior mean (at the weights without a posterior), or with decoding "
                "'averaged' the argmax of the S posterior samples' mean next-token distribution at each step; at "
                "most the task's max_new_tokens, cut at its first stop string",
    "samples": "S answers, one per posterior sample (else per MC-dropout mask, else temperature sampling at the "
               "weights without top-k/top-p), cut likewise; seeded by the seed",
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


@register_runner
class GenerativeRunner(Runner):
    name = "generative"
    description = "generative tasks"
    accepts = PRUNING_OPTIONS | {"task", "split", "file", "ece_bins", "mc_dropout_samples", "decoding",
                                 "sampling_temperature"}  # fmt: skip

    @classmethod
    def applies(cls, options, recipe) -> bool:
        from ...tasks.base import GENERATIVE

        return not options.lm_eval_tasks and bool(options.task) and task_kind(options.task) == GENERATIVE

    def describe(self) -> str:
        return f"generative ones ({', '.join(self.options.task)})"

    def resolve(self) -> str:
        from ...errors import UsageError
        from ...tasks import get_task

        options, recipe = self.options, self.recipe
        self.tasks = {name: get_task(name) for name in options.task}
        if options.file and len(self.tasks) > 1:
            raise UsageError("--file takes a single --task")
        self.splits = {}
        for name, task in self.tasks.items():
            split = options.split or (recipe.data.eval_split if recipe is not None and recipe.data.dataset == name
                                      else None)  # fmt: skip
            split = split or next((name for name in ("validation", "test") if name in task.splits), None)
            if split not in task.splits:
                raise UsageError(f"--split: task {name!r} has no split {split!r}; available: {', '.join(task.splits)}")
            self.splits[name] = split
        self.num_samples = options.samples if options.samples is not None else (
            recipe.run.final_eval_samples if recipe else 10)  # fmt: skip
        return f"eval-{self.splits[next(iter(self.tasks))]}"

    def load_data(self) -> None:
        from ...errors import UsageError
        from ...tasks import load_generative_split

        options = self.options
        self.rendering = {d["label"]: prompt_rendering(d["recipe"]) for d in self.described}
        self.loaded = {name: load_generative_split(name, self.splits[name], options.file, options.limit)
                       for name in self.tasks}  # fmt: skip
        for part in self.loaded.values():
            if not part.examples:
                raise UsageError(f"{part.summary()}: no example to evaluate")
        self.result = {"tasks": {name: {"split": self.splits[name], "num_examples": len(part.examples),
                                        "task": self.tasks[name].as_dict(), "data": part.as_dict(), "runs": {}}
                                 for name, part in self.loaded.items()}}  # fmt: skip
        self.evaluations = {name: {} for name in self.tasks}
        self.runs = {}

    def evaluate(self, described: dict, run, posterior) -> None:
        from ...evaluation.generative import decode_answers, evaluate_generative, sampling_for
        from ...rundir import optimizer_name

        options, label = self.options, described["label"]
        chat, why = self.rendering[label]
        sampling = sampling_for(posterior is not None, self.num_samples, options.mc_dropout_samples,
                                options.sampling_temperature)  # fmt: skip
        chosen = options.decoding if sampling.kind == "posterior" else "mean"  # averaging needs posterior samples
        fraction, temperature = options.prune_fractions[0], options.temperatures[0]
        self.runs[label] = {
            "decoding": chosen,
            "dir": described["dir"], "objective": run.recipe.objective if run.recipe else None,
            "optimizer": optimizer_name(run.recipe) if run.recipe else None,
            "prompts": f"{'chat template (question as the user message)' if chat else 'plain task prompt'} ({why})",
            "samples": sampling.kind, "num_samples": sampling.num_samples, "sampling": sampling.describe(),
            **({"sampling_temperature": sampling.temperature} if sampling.kind == "temperature" else {}),
            **self.run_record(run, posterior, fraction, temperature),
        }  # fmt: skip
        for name, part in self.loaded.items():
            logger.info("%s: %s %s (%d examples, %s)", label, name, self.splits[name], len(part.examples),
                        sampling.describe())  # fmt: skip
            evaluation = evaluate_generative(run.model, run.tokenizer, part.examples, self.tasks[name], chat=chat,
                                             posterior=posterior, sampling=sampling, seed=options.seed,
                                             batch_size=options.batch_size,
                                             decode=functools.partial(decode_answers, chosen=chosen))  # fmt: skip
            self.evaluations[name][label] = evaluation
            self.result["tasks"][name]["runs"][label] = evaluation.metrics(options.ece_bins)

    def summary(self) -> dict:
        return {**self.result, "runs": self.runs}

    def protocol(self) -> dict:
        from ...evaluation.uncertainty import CONFIDENCE_SCORES

        options = self.options
        return {
            **PROTOCOL,
            "scores": {name: score.description for name, score in CONFIDENCE_SCORES.items()},
            "correctness": {name: task.judge.name for name, task in self.tasks.items()},
            "num_samples": self.num_samples, "mc_dropout_samples": options.mc_dropout_samples,
            "sampling_temperature": options.sampling_temperature, "seed": options.seed,
            "ece": "equal-width bins on the score as a probability, (lo, hi]; only scores that are probabilities",
            "ece_bins": list(options.ece_bins),
            "selective": "accept from the most confident down; coverage at risk = largest coverage with "
                         "1 - accuracy <= r; AUROC and PRR null (reason under undefined) when all answers are "
                         "correct or all wrong",
            "units": "fractions (x100 for papers' tables)",
        }  # fmt: skip

    def json_ready(self, result: dict) -> dict:
        return json_safe(result)

    def write_files(self, staging: str, result: dict) -> None:
        from ...filenames import predictions_file_name, selective_plot_name
        from ...evaluation.plots import plot_selective_generation
        from ...evaluation.report import write_jsonl

        for name in self.tasks:
            files = {}
            for label, evaluation in self.evaluations[name].items():
                files[f"predictions_{label}"] = predictions_file_name(name, label)
                write_jsonl(os.path.join(staging, files[f"predictions_{label}"]), map(json_safe, evaluation.rows()))
            files["selective"] = selective_plot_name(name)
            plot_selective_generation(f"{name} {self.splits[name]}", result["tasks"][name]["runs"],
                                      os.path.join(staging, files["selective"]))  # fmt: skip
            result["tasks"][name]["files"] = files

    def tables(self, result: dict) -> tuple[str, str]:
        from ...evaluation.report import generation_table

        table = generation_table(result["tasks"], self.options.ece_bins)
        notes = "".join(f"- {label}: {run['prompts']}; sampled answers: {run['sampling']}.\n"
                        for label, run in result["runs"].items())  # fmt: skip
        return table, table + notes
