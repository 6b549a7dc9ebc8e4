"""`ivon-lora eval RUN --lm-eval-tasks ...`: lm-eval multiple-choice tasks -> the toolkit's calibration report.

Each run is scored by lm-eval (through the `ivon-lora` backend, samples logged) at its posterior mean and, for an
IVON run, with S posterior samples; a baseline run without a posterior at its weights. The logged choice
log-likelihoods become probabilities (`ivon_lora.evaluation.logged_choices`: the softmax behind lm-eval's `acc`)
and go through the toolkit's metric registry and report writers: eval.json, eval.md, predictions-TASK-RUN.jsonl,
reliability-TASK.png and selective-TASK.png, as `ivon-lora eval` writes them for its own tasks.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import json
import logging
import os

from ..artifacts import (
    REPORT_NAME,
    TABLE_NAME,
    check_new_output_dir,
    predictions_file_name,
    staged_output_dir,
    write_json_atomic,
)
from ..errors import UsageError
from ..evaluation.logged_choices import logged_choices
from ..evaluation.predict import Predictions, protocol
from ..evaluation.report import markdown_table, predictives, write_jsonl, write_task_plots
from ..rundir import check_out_apart, describe_run, environment, load_run
from ..tasks import get_protocol

logger = logging.getLogger(__name__)

# eval's options that choose its own tasks' data, or combine runs: they do not apply to lm-eval tasks.
_EVAL_ONLY_OPTIONS = {"task": "--task", "file": "--file", "split": "--split", "select_split": "--select-split",
                      "select_file": "--select-file", "ensemble": "--ensemble",
                      "temperature_scaling": "--temperature-scaling", "mc_dropout_samples": "--mc-dropout-samples"}  # fmt: skip
# The backend prunes with the posterior's default scope, mode and criterion (its model_arg prune= is a fraction).
_DEFAULT_PRUNING_OPTIONS = {"prune_scope": "--prune-scope", "prune_mode": "--prune-mode",
                            "prune_criterion": "--prune-criterion"}  # fmt: skip
SCORE = ("softmax over the choices of lm-eval's per-choice log-likelihoods (summed continuation log-probabilities): "
         "the distribution whose argmax is lm-eval's acc; acc_norm (per-byte ranking) is reported beside it")  # fmt: skip


def _check_options(options) -> None:
    defaults = {field.name: field.default for field in dataclasses.fields(options)}
    for name, flag in _EVAL_ONLY_OPTIONS.items():
        if getattr(options, name):
            raise UsageError(f"{flag} does not apply to --lm-eval-tasks (lm-eval's task config chooses the data; "
                             "runs are scored at the mean and with posterior samples)")  # fmt: skip
    for name, flag in _DEFAULT_PRUNING_OPTIONS.items():
        if getattr(options, name) != defaults[name]:
            raise UsageError(f"{flag} does not apply to --lm-eval-tasks: the lm-eval backend prunes with {flag} "
                             f"{defaults[name]} (the default); drop it")  # fmt: skip
    if options.sweeping:
        raise UsageError("sweeps do not apply to --lm-eval-tasks: pass one --prune-fractions and one --temperatures")


def _task_manager(tasks: list[str], include_path: str | None):
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


def _scored(choices, probs, ece_bins, ece_edges: str = "right") -> dict:
    """The registry's metrics of one predictive (calibration and selective prediction)."""
    predictions = Predictions([str(i) for i in choices.doc_ids], choices.gold, choices.num_choices, probs)
    return predictions.metrics(ece_bins, ece_edges=ece_edges)["mean"]


def run_lm_eval_report(options) -> dict:
    """Score `options.lm_eval_tasks` (an `ivon_lora.config.EvalConfig`) with lm-eval; returns what eval.json holds."""
    _check_options(options)
    tasks = options.lm_eval_tasks
    main = describe_run(options.run_dir, set(), options.trust_remote_code)
    baseline = describe_run(options.baseline, {main["label"]}, options.trust_remote_code) if options.baseline else None
    recipe = main["recipe"]
    preset = get_protocol(options.protocol or (recipe.run.protocol if recipe else "ivon-lora"))
    num_samples = preset.num_samples if options.samples is None else options.samples
    ece_bins = sorted(set(options.ece_bins) | {preset.ece_bins})
    fraction, temperature = options.prune_fractions[0], options.temperatures[0]
    if not main["has_posterior"] and (fraction or temperature != 1.0):
        raise UsageError(f"{options.run_dir} has no posterior (not an IVON run): pruning and temperature need one")
    out = options.out or os.path.join(options.run_dir, "eval-lm-eval")
    inputs = {"run dir": options.run_dir, "baseline": options.baseline}
    check_out_apart(out, inputs if options.out else {"baseline": options.baseline})  # the default is the run's own
    check_new_output_dir(out, options.overwrite)
    from .lm_eval import IVONLoRALM, hub_hint  # first: names the extra if lm-eval is missing

    import lm_eval
    from lm_eval.utils import handle_non_serializable

    manager = _task_manager(tasks, options.lm_eval_include_path)

    logged = {task: {} for task in tasks}  # task -> run label -> predictive ("mean" / "sampled") -> LoggedChoices
    runs, lm_eval_outputs = {}, {}
    for described in (main, baseline):
        if described is None:
            continue
        label, run = described["label"], load_run(described["dir"], trust_remote_code=options.trust_remote_code)
        sampled = num_samples if run.posterior is not None else 0
        runs[label] = {"dir": described["dir"], "samples": "posterior" if sampled else None, "num_samples": sampled,
                       **({"pruning": run.posterior.evaluation_record(fraction, temperature)} if run.posterior else {})}  # fmt: skip
        for predictive, samples in (("mean", 0), ("sampled", sampled)):
            if predictive == "sampled" and not samples:
                continue
            logger.info("%s: lm-eval %s, %s", label, ",".join(tasks), "mean" if not samples else f"{samples} samples")
            test_time = {"prune": fraction, "temperature": temperature} if run.posterior is not None else {}
            lm = IVONLoRALM(run, samples=samples, seed=options.seed, batch_size=options.batch_size, **test_time)
            with hub_hint():
                output = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True,
                                                 limit=options.limit)  # fmt: skip
            for task in tasks:
                if task not in output["samples"]:
                    raise UsageError(f"lm-eval task {task!r} is a group ({', '.join(output['samples'])}): name its "
                                     "multiple-choice subtasks in --lm-eval-tasks")  # fmt: skip
                if output["configs"][task]["output_type"] != "multiple_choice":
                    raise UsageError(f"lm-eval task {task!r} is {output['configs'][task]['output_type']}: calibration "
                                     "covers output_type: multiple_choice tasks only")  # fmt: skip
                logged[task].setdefault(label, {})[predictive] = logged_choices(task, output["samples"][task])
            # lm-eval's own results and resolved task configs, made JSON-safe as its CLI writes them.
            kept = {k: v for k, v in output.items() if k != "samples"}
            kept = json.loads(json.dumps(kept, default=handle_non_serializable))
            lm_eval_outputs.setdefault(label, {})[predictive] = kept
            del lm
        del run
        gc.collect()

    result = {"tasks": {}, "runs": runs}
    rows_by_task = {}
    for task in tasks:
        config = lm_eval_outputs[main["label"]]["mean"]["configs"][task]
        reference = logged[task][main["label"]]["mean"]
        entry = {"split": config.get("test_split") or config.get("validation_split"),
                 "num_examples": len(reference.doc_ids), "lm_eval_task": config, "runs": {}}  # fmt: skip
        rows_by_task[task] = {}
        for label, by_predictive in logged[task].items():
            for choices in by_predictive.values():
                if choices.doc_ids != reference.doc_ids or not choices.gold.equal(reference.gold):
                    raise ValueError(f"lm-eval task {task!r}: {label}'s documents or gold answers differ from "
                                     f"{main['label']}'s; they must be scored on the same rows")  # fmt: skip
            probs = {predictive: choices.probs() for predictive, choices in by_predictive.items()}
            metrics = {"mean": _scored(reference, probs["mean"], ece_bins, preset.ece_edges),
                       "lm_eval": {p: c.lm_eval_scores() for p, c in by_predictive.items()}}  # fmt: skip
            if "sampled" in probs:
                metrics["sampled"] = {"samples": runs[label]["num_samples"],
                                      **_scored(reference, probs["sampled"], ece_bins, preset.ece_edges)}  # fmt: skip
                metrics["sample_kind"] = "posterior"
            entry["runs"][label] = metrics
            rows_by_task[task][label] = [
                {"doc_id": doc_id, "gold": int(reference.gold[i]),
                 **{p: {"loglikelihoods": c.loglikelihoods[i], "probs": probs[p][i, : len(c.loglikelihoods[i])].tolist()}
                    for p, c in by_predictive.items()}}
                for i, doc_id in enumerate(reference.doc_ids)
            ]  # fmt: skip
        result["tasks"][task] = entry

    from importlib.metadata import version

    result.update(
        protocol={
            **protocol(preset, num_samples, ece_bins),
            "scoring": "lm-eval's prompts and choices; log-likelihood of each choice's continuation",
            "probabilities": SCORE,
            "predictive": "posterior mean weights; and log (1/S) sum_s p_s(choice | prompt) per choice (sequence "
                          "probabilities averaged over S samples), normalised over the choices",
            "seed": options.seed,
            "limit": options.limit,
        },
        lm_eval=lm_eval_outputs,
        environment={**environment(), "lm-eval": version("lm-eval")},
    )  # fmt: skip
    with staged_output_dir(out) as staging:
        for task, entry in result["tasks"].items():
            files, curves = {}, []
            for label, metrics in entry["runs"].items():
                files[f"predictions_{label}"] = predictions_file_name(task, label)
                write_jsonl(os.path.join(staging, files[f"predictions_{label}"]), rows_by_task[task][label])
                choices = logged[task][label]
                for index, (predictive, values) in enumerate(predictives(metrics)):
                    probs = choices["mean" if index == 0 else "sampled"].probs()
                    curves.append((f"{label} {predictive}", probs, choices["mean"].gold, values))
            entry["files"] = {**files, **write_task_plots(staging, task, curves, preset.ece_bins, preset.ece_edges)}
        write_json_atomic(os.path.join(staging, REPORT_NAME), result)
        table = markdown_table(result["tasks"], ece_bins)
        with open(os.path.join(staging, TABLE_NAME), "w") as f:
            f.write(table)
    for line in table.splitlines():
        logger.info("%s", line)
    logger.info("wrote %s", out)
    return result
