"""lm-eval multiple-choice tasks scored for the toolkit's calibration report (`ivon-lora eval --lm-eval-tasks`,
driven by `ivon_lora.evaluation.kinds.lm_eval`).

Each run is scored by lm-eval through the `ivon-lora` backend with samples logged (`score_with_lm_eval`); the logged
choice log-likelihoods become probabilities (`ivon_lora.evaluation.logged_choices`: the softmax behind lm-eval's
`acc`) and go through the toolkit's metric registry (`task_entries`) and report writers (`write_lm_eval_task_files`).
"""

from __future__ import annotations

import difflib
import json
import os

from ..filenames import predictions_file_name
from ..errors import UsageError
from .logged_choices import logged_choices
from .predict import Predictions
from .report import predictives, write_jsonl, write_task_plots

SCORE = ("softmax over the choices of lm-eval's per-choice log-likelihoods (summed continuation log-probabilities): "
         "the distribution whose argmax is lm-eval's acc; acc_norm (per-byte ranking) is reported beside it")  # fmt: skip


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's TaskManager, after checking that every task name is one it knows (no dataset is loaded).

    Indexing lm-eval's own task YAMLs takes seconds to tens of seconds; when every task is a plain task of the
    include path (which lm-eval would let override a built-in of the same name anyway), only that path is indexed.
    """
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):
            return local
    manager = TaskManager(include_path=include_path)
    for task in tasks:
        if not manager.match_tasks([task]):
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"Unknown lm-eval task {task!r}.{hint} (local task YAMLs: --lm-eval-include-path DIR)")
    return manager


def score_with_lm_eval(run, tasks: list[str], manager, *, samples: int, seed: int, batch_size: int, limit,
                       **test_time) -> tuple[dict, dict]:  # fmt: skip
    """One lm-eval pass of `run` over `tasks` (at the mean: `samples` 0; else S posterior samples; `test_time`:
    the backend's prune= and temperature=): each task's `LoggedChoices`, and lm-eval's own results and resolved
    task configs, made JSON-safe as its CLI writes them."""
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    from ..integrations.lm_eval import IVONLoRALM, hub_hint

    lm = IVONLoRALM(run, samples=samples, seed=seed, batch_size=batch_size, **test_time)
    with hub_hint():  # a task whose Hub dataset cannot load: one line naming it and the local-file way
        output = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True, limit=limit)
    logged = {}
    for task in tasks:
        if task not in output["samples"]:
            raise UsageError(f"lm-eval task {task!r} is a group ({', '.join(output['samples'])}): name its "
                             "multiple-choice subtasks in --lm-eval-tasks")  # fmt: skip
        if output["configs"][task]["output_type"] != "multiple_choice":
            raise UsageError(f"lm-eval task {task!r} is {output['configs'][task]['output_type']}: calibration "
                             "covers output_type: multiple_choice tasks only")  # fmt: skip
        logged[task] = logged_choices(task, output["samples"][task])
    kept = {k: v for k, v in output.items() if k != "samples"}
    return logged, json.loads(json.dumps(kept, default=handle_non_serializable))


def _scored(choices, probs, ece_bins, ece_edges: str = "right") -> dict:
    """The registry's metrics of one predictive (calibration and selective prediction)."""
    predictions = Predictions([str(i) for i in choices.doc_ids], choices.gold, choices.num_choices, probs)
    return predictions.metrics(ece_bins, ece_edges=ece_edges)["mean"]


def task_entries(logged: dict, lm_eval_outputs: dict, runs: dict, main_label: str, ece_bins, ece_edges: str) -> dict:
    """eval.json's entry per task (split, lm-eval's task config, each run's metrics), from `logged` (task -> run
    label -> predictive -> LoggedChoices); every run must be scored on the main run's documents."""
    entries = {}
    for task, by_run in logged.items():
        config = lm_eval_outputs[main_label]["mean"]["configs"][task]
        reference = by_run[main_label]["mean"]
        entry = {"split": config.get("test_split") or config.get("validation_split"),
                 "num_examples": len(reference.doc_ids), "lm_eval_task": config, "runs": {}}  # fmt: skip
        for label, by_predictive in by_run.items():
            for choices in by_predictive.values():
                if choices.doc_ids != reference.doc_ids or not choices.gold.equal(reference.gold):
                    raise ValueError(f"lm-eval task {task!r}: {label}'s documents or gold answers differ from "
                                     f"{main_label}'s; they must be scored on the same rows")  # fmt: skip
            probs = {predictive: choices.probs() for predictive, choices in by_predictive.items()}
            metrics = {"mean": _scored(reference, probs["mean"], ece_bins, ece_edges),
                       "lm_eval": {p: c.lm_eval_scores() for p, c in by_predictive.items()}}  # fmt: skip
            if "sampled" in probs:
                metrics["sampled"] = {"samples": runs[label]["samples"],
                                      **_scored(reference, probs["sampled"], ece_bins, ece_edges)}  # fmt: skip
                metrics["sample_kind"] = "posterior"
            entry["runs"][label] = metrics
        entries[task] = entry
    return entries


def _rows(by_predictive: dict) -> list[dict]:
    """One run's per-example rows of a task: each predictive's choice log-likelihoods and probabilities."""
    reference = by_predictive["mean"]
    probs = {predictive: choices.probs() for predictive, choices in by_predictive.items()}
    return [
        {"doc_id": doc_id, "gold": int(reference.gold[i]),
         **{p: {"loglikelihoods": c.loglikelihoods[i], "probs": probs[p][i, : len(c.loglikelihoods[i])].tolist()}
            for p, c in by_predictive.items()}}
        for i, doc_id in enumerate(reference.doc_ids)
    ]  # fmt: skip


def write_lm_eval_task_files(staging: str, task: str, entry: dict, logged: dict, preset) -> dict:
    """One task's predictions-TASK-RUN.jsonl per run, reliability and selective plots; returns their names."""
    files, curves = {}, []
    for label, metrics in entry["runs"].items():
        files[f"predictions_{label}"] = predictions_file_name(task, label)
        write_jsonl(os.path.join(staging, files[f"predictions_{label}"]), _rows(logged[label]))
        choices = logged[label]
        for index, (predictive, values) in enumerate(predictives(metrics)):
            probs = choices["mean" if index == 0 else "sampled"].probs()
            curves.append((f"{label} {predictive}", probs, choices["mean"].gold, values))
    return {**files, **write_task_plots(staging, task, curves, preset.ece_bins, preset.ece_edges)}
