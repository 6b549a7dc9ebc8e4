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
        DECODING_MODES,
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
    parser.add_argument("--batched-samples", type=int, metavar="K",
                        help="multiple-choice tasks: score K posterior samples per forward pass, each with its own "
                             "LoRA delta on a stacked batch (default 0: one sample per pass)")
    parser.add_argument("--ece-bins", type=int, nargs="+", help=f"default {' '.join(map(str, DEFAULT_ECE_BINS))}")
    parser.add_argument("--baseline", help="a second run dir (e.g. AdamW) evaluated side by side")
    parser.add_argument("--mc-dropout-samples", type=int,
                        help="MC-dropout samples for runs without a posterior (default 0: weights only)")  # fmt: skip
    parser.add_argument("--sampling-temperature", type=number_in(0.0, float("inf"), low_inclusive=False),
                        help="generative tasks: temperature of the sampled answers of a run without posterior or "
                             "MC dropout (default 1)")  # fmt: skip
    parser.add_argument("--decoding", choices=DECODING_MODES,
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
    run_eval(config)
    return 0


def run_eval(options) -> dict:
    """Evaluate `options` (an `ivon_lora.config.EvalConfig`) with the one eval kind that applies to them
    (`ivon_lora.commands.runners`); returns what eval.json holds."""
    from ..artifacts import REPORT_NAME, TABLE_NAME, check_new_output_dir, staged_output_dir, write_json_atomic
    from ..errors import UsageError
    from ..rundir import check_out_apart, describe_run, load_run
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
    check_out_apart(out, inputs if options.out else {k: v for k, v in inputs.items() if k != "run dir"})
    check_new_output_dir(out, options.overwrite)
    runner.load_data()

    for run_description in described:
        run = load_run(run_description["dir"], trust)
        runner.evaluate(run_description, run, runner.posterior_for(run_description, run))
        del run
        gc.collect()
    runner.finish()

    result = {**runner.summary(), "protocol": runner.protocol(), "environment": runner.environment()}
    with staged_output_dir(out) as staging:
        runner.write_files(staging, result)
        write_json_atomic(os.path.join(staging, REPORT_NAME), runner.json_ready(result))
        table, text = runner.tables(result)
        with open(os.path.join(staging, TABLE_NAME), "w") as f:
            f.write(text)
    for line in table.splitlines():
        logger.info("%s", line)
    logger.info("wrote %s", out)
    return result
