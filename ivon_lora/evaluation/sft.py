"""`ivon-lora eval` of an SFT run: validation loss and perplexity at the posterior mean and of the S-sample
posterior predictive, on the run's eval split (or another split / local file), side by side with a baseline run.

The rows are tokenized by TRL exactly as in training (the run's recipe: chat template, max_length, completion-only
or assistant-only labels, packing), so the numbers are the ones `ivon-lora train` wrote for the same split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile

logger = logging.getLogger(__name__)

# What `eval` can do for a multiple-choice run but not (yet) for an SFT run: refused, not ignored.
_CHOICE_ONLY = {"sweeping": "pruning/temperature sweeps", "temperature_scaling": "--temperature-scaling",
                "risk_averse": "--risk-averse",
                "ensemble": "--ensemble", "mc_dropout_samples": "--mc-dropout-samples"}  # fmt: skip


def sft_batches(run, split, batch_size: int) -> list[dict]:
    """`split`'s rows as TRL's SFT evaluation batches for `run` (its recipe's SFTConfig), on the model's device, as
    training evaluated them (`IVONSFTTrainer.evaluation_batches`)."""
    from ..sft import IVONSFTTrainer

    with tempfile.TemporaryDirectory() as scratch:
        args = dataclasses.replace(run.recipe.training, output_dir=scratch, per_device_eval_batch_size=batch_size,
                                   report_to="none", eval_strategy="no", save_strategy="no")  # fmt: skip
        # SFTTrainer insists on a train set; one row of the split is tokenized and never used.
        trainer = IVONSFTTrainer(model=run.model, args=args, train_dataset=split.dataset.select(range(1)),
                                 eval_dataset=split.dataset, processing_class=run.tokenizer)  # fmt: skip
        return trainer.evaluation_batches()


def check_sft_options(options) -> None:
    from ..errors import UsageError

    for key, flag in _CHOICE_ONLY.items():
        if getattr(options, key):
            raise UsageError(f"{flag} is for multiple-choice tasks; {options.run_dir} is an SFT run (pass --task to "
                             "score it on a multiple-choice task)")  # fmt: skip
    if len(options.prune_fractions) > 1 or len(options.temperatures) > 1:
        raise UsageError("an SFT run is evaluated at one pruning fraction and one posterior temperature")


def run_sft_eval(options, described: list[dict]) -> dict:
    """Evaluate SFT run dirs (`described`: the run, then any baseline, as `rundir.describe_run` gives them) into
    eval.json and eval.md."""
    from ..artifacts import REPORT_NAME, TABLE_NAME, check_new_output_dir, staged_output_dir, write_json_atomic
    from ..continual import started_from
    from ..errors import UsageError
    from ..rundir import check_out_apart, environment, load_run, optimizer_name
    from ..sft.data import load_sft_split
    from ..sft.likelihood import predictive_losses

    check_sft_options(options)
    recipe = described[0]["recipe"]
    for other in described[1:]:
        if other["recipe"] is None or other["recipe"].objective != "sft":
            raise UsageError(f"--baseline {other['dir']} is not an SFT run: compare SFT runs with SFT runs")
    data = recipe.data
    split_name = options.split or data.eval_split
    # --file, else the recipe's eval_file for its own eval split, else the dataset's split.
    data_file = options.file or (data.eval_file if split_name == data.eval_split else None)
    out = options.out or os.path.join(options.run_dir, f"eval-{split_name}")  # the one output inside an input
    inputs = {"run dir": options.run_dir, "baseline": options.baseline}
    check_out_apart(out, inputs if options.out else {"baseline": options.baseline})
    check_new_output_dir(out, options.overwrite)
    split = load_sft_split(data.dataset, split_name, data_file, config_name=data.dataset_config,
                           max_samples=options.limit)  # fmt: skip
    num_samples = recipe.run.final_eval_samples if options.samples is None else options.samples
    fraction, temperature = options.prune_fractions[0], options.temperatures[0]
    result = {"objective": "sft", "split": split_name, "data": split.as_dict(), "runs": {}}
    for run_description in described:
        run = load_run(run_description["dir"], trust_remote_code=options.trust_remote_code)
        posterior = run.posterior
        if posterior is not None and (fraction, temperature) != (0.0, 1.0):
            posterior = posterior.at_test_time(fraction, temperature, scope=options.prune_scope,
                                               mode=options.prune_mode, criterion=options.prune_criterion)  # fmt: skip
        logger.info("%s: %s %s (%d rows)", run_description["label"], split.source, split_name, len(split.dataset))
        batches = sft_batches(run, split, options.batch_size)
        metrics = predictive_losses(run.model, batches, posterior, num_samples if posterior is not None else 0,
                                    options.seed)  # fmt: skip
        result["runs"][run_description["label"]] = {
            "dir": run_description["dir"], "optimizer": optimizer_name(run.recipe), "posterior": posterior is not None,
            **({"pruning": run.posterior.evaluation_record(fraction, temperature)} if posterior is not None else {}),
            **started_from(run),
            "metrics": metrics,
        }  # fmt: skip
    result.update(
        protocol={"unit": "sequence", "num_samples": num_samples, "seed": options.seed,
                  "loss": "nats per target token; sampled: -sum over documents of log mean_s p_s(y|x), over the "
                          "target tokens; expected_loss: the samples' own mean loss"},  # fmt: skip
        environment=environment(),
    )
    table = sft_table(result["runs"])
    with staged_output_dir(out) as staging:
        write_json_atomic(os.path.join(staging, REPORT_NAME), result)
        with open(os.path.join(staging, TABLE_NAME), "w") as f:
            f.write(f"{split.source} {split_name} ({len(split.dataset)} rows): validation loss per target token\n\n")
            f.write(table + "\n")
    for line in table.splitlines():
        logger.info("%s", line)
    logger.info("wrote %s", out)
    return result


def sft_table(runs: dict) -> str:
    """A markdown table of SFT runs (label -> {"metrics": {"mean", "sampled"?}, "posterior": bool})."""
    lines = ["| run | predictive | loss | perplexity | expected loss of one sample |", "|---|---|---|---|---|"]
    for label, run in runs.items():
        for name, values in run["metrics"].items():
            predictive = f"{values['samples']} posterior samples" if name == "sampled" else "posterior mean"
            if not run["posterior"]:
                predictive = "weights"
            expected = f"{values['expected_loss']:.4f}" if "expected_loss" in values else ""
            lines.append(f"| {label} | {predictive} | {values['loss']:.4f} | {values['perplexity']:.3f} | {expected} |")
    return "\n".join(lines)
