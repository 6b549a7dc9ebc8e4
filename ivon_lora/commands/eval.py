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

Each of these kinds is a `Runner` (`ivon_lora.commands.runners`); `run_eval` is the one driver they share.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os

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
    """Evaluate `options` (an `ivon_lora.config.EvalConfig`) with the one eval kind that applies to them
    (`ivon_lora.commands.runners`); returns what eval.json holds."""
    from ..fileio import write_json_atomic
    from ..filenames import REPORT_NAME, TABLE_NAME
    from ..output_dir import claim_output_dir, staged_output_dir
    from ..errors import UsageError
    from ..rundir import describe_run, load_run
    from .runners import select_runner

    # Everything that can be wrong with the options is checked before a model loads.
    trust = options.trust_remote_code  # the user's consent to a run's base-model code (rundir.check_remote_code)
    main = describe_run(options.run_dir, set(), trust)
    described = [main]
    runner = select_runner(options, main["recipe"])(options, described)
    runner.check_options()
    if options.baseline:
        described.append(describe_run(options.baseline, {main["label"]}, trust))
    described += [{**describe_run(member, set(), trust), "member": True} for member in options.ensemble or []]
    for run in described[:2]:
        if not run["has_posterior"] and options.mc_dropout_samples and not run["dropout"]:
            raise UsageError(f"--mc-dropout-samples: {run['dir']} has no dropout (lora_dropout 0) to sample: "
                             "evaluate it without MC dropout (--mc-dropout-samples 0)")  # fmt: skip
    default_out = runner.resolve()
    out = options.out or os.path.join(options.run_dir, default_out)  # the one output inside an input: its own
    inputs = {"run dir": options.run_dir, "baseline": options.baseline,
              **{f"ensemble member {i + 1}": member for i, member in enumerate(options.ensemble or [])}}  # fmt: skip
    claim_output_dir(out, "eval", options.overwrite,
                     inputs if options.out else {k: v for k, v in inputs.items() if k != "run dir"})  # fmt: skip
    runner.load_data()

    for run_description in described:
        run = load_run(run_description["dir"], trust)
        runner.evaluate(run_description, run, runner.posterior_for(run_description, run))
        del run
        gc.collect()
    runner.finish()

    result = {**runner.summary(), "protocol": runner.protocol(), "environment": runner.environment()}
    with staged_output_dir(out, "eval") as staging:
        runner.write_files(staging, result)
        write_json_atomic(os.path.join(staging, REPORT_NAME), runner.json_ready(result))
        table, text = runner.tables(result)
        with open(os.path.join(staging, TABLE_NAME), "w") as f:
            f.write(text)
    for line in table.splitlines():
        logger.info("%s", line)
    logger.info("wrote %s", out)
    return result
