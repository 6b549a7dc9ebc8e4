"""`ivon-lora eval`: run dir(s) -> predictive metrics per task, at the mean and over samples, plus report files.

One command evaluates an IVON run (posterior mean and S posterior samples, optionally pruned / tempered, or a
pruning-temperature sweep chosen on a held-out split) on one or more tasks, and optionally a baseline run
(e.g. AdamW: at its weights and with MC-dropout samples) side by side under the same protocol. Output dir:
eval.json (everything, with protocol and versions), eval.md (table), predictions-TASK-RUN.jsonl (per-example
probabilities), reliability-TASK.png, selective-TASK.png and, for sweeps, tradeoff.png.

A generative task (`--task wordqa`, triviaqa, nq_open, gsm8k) gets the selective-generation report instead, from any
run dir, choice or SFT (`ivon_lora.evaluation.generative`): eval.json, eval.md, predictions-TASK-RUN.jsonl (answers,
scores, correctness per example) and selective-TASK.png. An SFT run without --task gets its validation loss, and
--lm-eval-tasks lm-evaluation-harness's multiple-choice tasks through the same report.

Each of these kinds is a registered strategy (`ivon_lora.evaluation.kinds`); the plan is resolved once
(`ivon_lora.evaluation.plan`) and scored in one straight line (`ivon_lora.evaluation.run`).
"""

from __future__ import annotations

import argparse
import logging

from ..config import EvalConfig
from ._options import build_parser, config_from_options

logger = logging.getLogger(__name__)


CONFIG_CLASS = EvalConfig  # the parser's flags and the config that main gets


def make_parser(subparsers) -> argparse.ArgumentParser:
    return build_parser(
        subparsers, "eval",
        help="Evaluate a run (and a baseline) at the mean and over samples on one or more tasks, optionally "
             "sweeping pruning/temperature.",
        description="Writes eval.json, eval.md, per-example predictions-TASK-RUN.jsonl, reliability-TASK.png, "
                    "selective-TASK.png and (sweeps) tradeoff.png to --out (default RUN_DIR/eval-SPLIT). Options "
                    "also come from a YAML CONFIG and key=value (keys: the flags with _ for -).",
        config_class=CONFIG_CLASS,
    )  # fmt: skip


def config_from(options: argparse.Namespace) -> EvalConfig:
    return config_from_options(options, CONFIG_CLASS, "eval")


def main(config) -> int:
    run_eval(config)
    return 0


def run_eval(options) -> dict:
    """Evaluate `options` (an `ivon_lora.config.EvalConfig`): resolve the plan (every refusal before a model loads),
    claim the output dir, score, write the report; returns what eval.json holds."""
    from ..output_dir import claim_output_dir
    from ..evaluation.plan import resolve_plan
    from ..evaluation.run import evaluate, write_report

    plan, described = resolve_plan(options)
    inputs = {"run dir": options.run_dir, "baseline": options.baseline,
              **{f"ensemble member {i + 1}": member for i, member in enumerate(options.ensemble or [])}}  # fmt: skip
    # The default output dir is inside the run dir: the one output allowed inside an input, its own.
    claim_output_dir(plan.out, "eval", options.overwrite,
                     inputs if options.out else {k: v for k, v in inputs.items() if k != "run dir"})  # fmt: skip
    evaluation = evaluate(plan, described)
    table = write_report(evaluation)
    for line in table.splitlines():
        logger.info("%s", line)
    logger.info("wrote %s", plan.out)
    return evaluation.result
