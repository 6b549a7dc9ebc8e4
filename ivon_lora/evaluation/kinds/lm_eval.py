"""`--lm-eval-tasks`: lm-eval multiple-choice tasks -> the toolkit's calibration report.

Each run is scored by lm-eval (through the `ivon-lora` backend, `ivon_lora.integrations.lm_eval`, samples logged)
at its posterior mean and, for an IVON run, with S posterior samples; a baseline run without a posterior at its
weights. The logged choice log-likelihoods become probabilities (`ivon_lora.evaluation.logged_choices`: the softmax
behind lm-eval's `acc`) and go through the toolkit's metric registry and report writers: eval.json, eval.md,
predictions-TASK-RUN.jsonl, reliability-TASK.png and selective-TASK.png, as for the toolkit's own tasks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .base import EvalKind, flag, protocol_preset, register_kind, reported_ece_bins, run_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMEvalData:
    preset: object  # tasks.Protocol: its ECE bins and edges
    manager: object  # lm-eval's TaskManager


@dataclass(frozen=True)
class LMEvalScores:
    record: dict
    logged: dict  # task -> predictive ("mean", "sampled") -> LoggedChoices
    outputs: dict  # predictive -> lm-eval's results, without the logged samples


@register_kind
class LMEvalKind(EvalKind):
    name = "lm_eval"
    description = "--lm-eval-tasks"
    # The backend prunes with the posterior's default scope, mode and criterion (its model_arg prune= is a fraction).
    accepts = frozenset({"lm_eval_tasks", "lm_eval_include_path", "protocol", "ece_bins", "prune_fractions",
                         "temperatures"})  # fmt: skip

    @classmethod
    def applies(cls, options, recipe) -> bool:
        return bool(options.lm_eval_tasks)

    @classmethod
    def refusal(cls, options, option: str, accepted_by: list[str]) -> str:
        if option.startswith("prune_"):
            return (f"{flag(option)} does not apply to --lm-eval-tasks: the lm-eval backend prunes with its default "
                    f"{flag(option)}; drop it")  # fmt: skip
        return (f"{flag(option)} does not apply to --lm-eval-tasks (lm-eval's task config chooses the data; runs are "
                "scored at the mean and with posterior samples)")  # fmt: skip

    @classmethod
    def resolve(cls, options, described: list[dict]) -> dict:
        recipe = described[0]["recipe"]
        preset = protocol_preset(options, recipe)
        return {"tasks": tuple(options.lm_eval_tasks), "splits": (), "protocol": preset.name,
                "ece_bins": reported_ece_bins(options.ece_bins, preset), "out_name": "lm-eval"}  # fmt: skip

    @classmethod
    def load(cls, plan, described: list[dict]) -> LMEvalData:
        from ...integrations.lm_eval import IVONLoRALM  # noqa: F401  (first: names the extra if lm-eval is missing)
        from ..lm_eval_report import task_manager
        from ...tasks import get_protocol

        return LMEvalData(get_protocol(plan.protocol), task_manager(list(plan.tasks), plan.lm_eval_include_path))

    @classmethod
    def score(cls, plan, data: LMEvalData, described: dict, run) -> LMEvalScores:
        from ..lm_eval_report import score_with_lm_eval

        label, (fraction, temperature) = described["label"], plan.test_time
        # The backend builds the test-time posterior from prune= and temperature=.
        sampled = plan.samples if run.posterior is not None else 0
        record = {"dir": described["dir"], "samples": sampled, "sample_kind": "posterior" if sampled else None,
                  **run_record(run, run.posterior, fraction, temperature)}  # fmt: skip
        test_time = {"prune": fraction, "temperature": temperature} if run.posterior is not None else {}
        logged, outputs = {task: {} for task in plan.tasks}, {}
        for predictive, samples in (("mean", 0), ("sampled", sampled)):
            if predictive == "sampled" and not samples:
                continue
            logger.info(
                "%s: lm-eval %s, %s", label, ",".join(plan.tasks), "mean" if not samples else f"{samples} samples"
            )
            by_task, kept = score_with_lm_eval(run, list(plan.tasks), data.manager, samples=samples, seed=plan.seed,
                                               batch_size=plan.batch_size, limit=plan.limit, **test_time)  # fmt: skip
            for task, choices in by_task.items():
                logged[task][predictive] = choices
            outputs[predictive] = kept
        return LMEvalScores(record, logged, outputs)

    @classmethod
    def report(cls, plan, data: LMEvalData, scores: dict) -> dict:
        from ..lm_eval_report import task_entries

        logged = {task: {label: s.logged[task] for label, s in scores.items()} for task in plan.tasks}
        outputs = {label: s.outputs for label, s in scores.items()}
        runs = {label: s.record for label, s in scores.items()}
        entries = task_entries(logged, outputs, runs, plan.labels[0], list(plan.ece_bins), data.preset.ece_edges)
        return {"tasks": entries, "runs": runs, "lm_eval": outputs}

    @classmethod
    def protocol(cls, plan, data: LMEvalData) -> dict:
        from ..lm_eval_report import SCORE
        from ..predict import protocol

        return {
            **protocol(data.preset, plan.samples, plan.ece_bins),
            "scoring": "lm-eval's prompts and choices; log-likelihood of each choice's continuation",
            "probabilities": SCORE,
            "predictive": "posterior mean weights; and log (1/S) sum_s p_s(choice | prompt) per choice (sequence "
                          "probabilities averaged over S samples), normalised over the choices",
            "seed": plan.seed,
            "limit": plan.limit,
        }  # fmt: skip

    @classmethod
    def environment(cls) -> dict:
        from importlib.metadata import version

        return {**super().environment(), "lm-eval": version("lm-eval")}

    @classmethod
    def write_files(cls, plan, data: LMEvalData, scores: dict, staging: str, result: dict) -> None:
        from ..lm_eval_report import write_lm_eval_task_files

        for task, entry in result["tasks"].items():
            logged = {label: s.logged[task] for label, s in scores.items()}
            entry["files"] = write_lm_eval_task_files(staging, task, entry, logged, data.preset)

    @classmethod
    def tables(cls, plan, data: LMEvalData, result: dict) -> tuple[str, str]:
        from ..report import markdown_table

        table = markdown_table(result["tasks"], list(plan.ece_bins))
        return table, table
