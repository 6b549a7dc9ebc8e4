"""An SFT run's evaluation batches and report table: validation loss and perplexity at the posterior mean and of
the S-sample posterior predictive (`ivon-lora eval` of an SFT run: `ivon_lora.evaluation.kinds.sft`).

The rows are tokenized by TRL exactly as in training (the run's recipe: chat template, max_length, completion-only
or assistant-only labels, packing), so the numbers are the ones `ivon-lora train` wrote for the same split.
"""

from __future__ import annotations

import dataclasses
import tempfile


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
