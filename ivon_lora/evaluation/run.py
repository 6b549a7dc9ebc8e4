"""The one evaluation path: plan -> data -> every run's scores -> combined -> report, for every kind.

`evaluate(plan, described)` loads the plan's data, then each run in turn (freed before the next loads), scores it
through the plan's kind (`evaluation.kinds`), combines the runs (ensembles, temperature scaling) and returns the
report with the plan, the protocol and the environment; `write_report` writes it, staged, into the plan's output
dir. `ivon-lora eval`, `compare` and the studies call these two; `train`'s final evaluation scores through the same
kind with the plan its recipe resolves to (`plan.plan_for_training`).
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

from .kinds import EVAL_KINDS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """What an evaluation produced: eval.json's content (`result`) and each run's scores (predictions included),
    by run label, for the report files and for callers that use per-example predictions (compare, the studies)."""

    plan: object  # EvalPlan
    data: object  # the kind's loaded data
    scores: dict
    result: dict


def evaluate(plan, described: list[dict]) -> Evaluation:
    """Score every run of `plan` (`described`: `rundir.describe_run` of its run, baseline and ensemble members)."""
    from ..rundir import load_run

    kind = EVAL_KINDS[plan.kind]
    data = kind.load(plan, described)
    scores, member = {}, 0
    for run_description in described:
        run = load_run(run_description["dir"], plan.trust_remote_code)
        if run_description.get("member"):
            member += 1
            key = f"ensemble member {member}"  # members share labels; `combine` replaces them by the ensemble
        else:
            key = run_description["label"]
        scores[key] = kind.score(plan, data, run_description, run)
        del run
        gc.collect()
    scores = kind.combine(plan, data, scores)
    result = {**kind.report(plan, data, scores), "plan": plan.as_dict(), "protocol": kind.protocol(plan, data),
              "environment": kind.environment()}  # fmt: skip
    return Evaluation(plan, data, scores, result)


def write_report(evaluation: Evaluation, command: str = "eval") -> str:
    """eval.json, eval.md and the kind's files (predictions, plots) into the plan's output dir, staged (replaced
    whole or not at all); returns the table logged at the end."""
    from ..fileio import write_json_atomic
    from ..filenames import REPORT_NAME, TABLE_NAME
    from ..output_dir import staged_output_dir

    plan, kind = evaluation.plan, EVAL_KINDS[evaluation.plan.kind]
    result = evaluation.result
    with staged_output_dir(plan.out, command) as staging:
        kind.write_files(plan, evaluation.data, evaluation.scores, staging, result)
        write_json_atomic(os.path.join(staging, REPORT_NAME), kind.json_ready(result))
        table, text = kind.tables(plan, evaluation.data, result)
        with open(os.path.join(staging, TABLE_NAME), "w") as f:
            f.write(text)
    return table
