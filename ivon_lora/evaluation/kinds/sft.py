"""SFT runs without --task: validation loss and perplexity at the posterior mean and of the S-sample posterior
predictive, on the run's eval split (or another split / local file), beside a baseline run.

The rows are tokenized by TRL exactly as in training (`ivon_lora.evaluation.sft.sft_batches`: the run's recipe),
so the numbers are the ones `ivon-lora train` wrote for the same split.
"""

from __future__ import annotations

import logging

from .base import PRUNING_OPTIONS, EvalKind, register_kind, run_record, test_time_posterior

logger = logging.getLogger(__name__)

LOSS = ("nats per target token; sampled: -sum over documents of log mean_s p_s(y|x), over the target tokens; "
        "expected_loss: the samples' own mean loss")  # fmt: skip


def sft_protocol(samples: int, seed: int) -> dict:
    """How an SFT run's validation loss was made: `ivon-lora eval` and train's final evaluation alike."""
    return {"unit": "sequence", "samples": samples, "seed": seed, "loss": LOSS}


@register_kind
class SFTKind(EvalKind):
    name = "sft"
    description = "SFT runs"
    accepts = PRUNING_OPTIONS | {"split", "file"}

    @classmethod
    def applies(cls, options, recipe) -> bool:
        from ...objectives import get_objective

        if options.lm_eval_tasks or options.task or recipe is None:
            return False
        return get_objective(recipe.objective).eval_kind == cls.name

    @classmethod
    def describe(cls, options) -> str:
        return f"an SFT run ({options.run_dir}; pass --task to score it on a multiple-choice task)"

    @classmethod
    def resolve(cls, options, described: list[dict]) -> dict:
        from ...errors import UsageError

        for other in described[1:]:
            if other["recipe"] is None or not cls.applies(options, other["recipe"]):
                raise UsageError(f"--baseline {other['dir']} is not an SFT run: compare SFT runs with SFT runs")
        data = described[0]["recipe"].data
        split = options.split or data.eval_split
        return {"tasks": (data.dataset,), "splits": (split,), "out_name": split}

    @classmethod
    def load(cls, plan, described: list[dict]):
        from ...sft.data import load_sft_split

        data = described[0]["recipe"].data
        # --file, else the recipe's eval_file for its own eval split, else the dataset's split.
        split = plan.splits[0]
        data_file = plan.file or (data.eval_file if split == data.eval_split else None)
        return load_sft_split(data.dataset, split, data_file, config_name=data.dataset_config, max_samples=plan.limit)

    @classmethod
    def score(cls, plan, data, described: dict, run) -> dict:
        from ...rundir import optimizer_name
        from ...sft.likelihood import predictive_losses
        from ..sft import sft_batches

        posterior = test_time_posterior(plan, run)
        logger.info("%s: %s %s (%d rows)", described["label"], data.source, plan.splits[0], len(data.dataset))
        batches = sft_batches(run, data, plan.batch_size)
        metrics = predictive_losses(run.model, batches, posterior, plan.samples if posterior is not None else 0,
                                    plan.seed)  # fmt: skip
        return {
            "dir": described["dir"], "optimizer": optimizer_name(run.recipe), "posterior": posterior is not None,
            **run_record(run, posterior, *plan.test_time),
            "metrics": metrics,
        }  # fmt: skip

    @classmethod
    def report(cls, plan, data, scores: dict) -> dict:
        return {"objective": "sft", "split": plan.splits[0], "data": data.as_dict(), "runs": scores}

    @classmethod
    def protocol(cls, plan, data) -> dict:
        return sft_protocol(plan.samples, plan.seed)

    @classmethod
    def tables(cls, plan, data, result: dict) -> tuple[str, str]:
        from ..sft import sft_table

        table = sft_table(result["runs"])
        header = f"{data.source} {plan.splits[0]} ({len(data.dataset)} rows): validation loss per target token"
        return table, f"{header}\n\n{table}\n"
