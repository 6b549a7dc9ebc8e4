"""SFT runs without --task: validation loss and perplexity at the posterior mean and of the S-sample posterior
predictive, on the run's eval split (or another split / local file), beside a baseline run.

The rows are tokenized by TRL exactly as in training (`ivon_lora.evaluation.sft.sft_batches`: the run's recipe),
so the numbers are the ones `ivon-lora train` wrote for the same split.
"""

from __future__ import annotations

import logging

from .base import PRUNING_OPTIONS, Runner, register_runner

logger = logging.getLogger(__name__)


@register_runner
class SFTRunner(Runner):
    name = "sft"
    description = "SFT runs"
    accepts = PRUNING_OPTIONS | {"split", "file"}

    @classmethod
    def applies(cls, options, recipe) -> bool:
        from ...objectives import get_objective

        if options.lm_eval_tasks or options.task or recipe is None:
            return False
        return get_objective(recipe.objective).eval_kind == cls.name

    def describe(self) -> str:
        return f"an SFT run ({self.options.run_dir}; pass --task to score it on a multiple-choice task)"

    def resolve(self) -> str:
        from ...errors import UsageError

        for other in self.described[1:]:
            if other["recipe"] is None or not self.applies(self.options, other["recipe"]):
                raise UsageError(f"--baseline {other['dir']} is not an SFT run: compare SFT runs with SFT runs")
        data = self.recipe.data
        self.split_name = self.options.split or data.eval_split
        self.num_samples = self.recipe.run.final_eval_samples if self.options.samples is None else self.options.samples
        return f"eval-{self.split_name}"

    def load_data(self) -> None:
        from ...sft.data import load_sft_split

        data = self.recipe.data
        # --file, else the recipe's eval_file for its own eval split, else the dataset's split.
        data_file = self.options.file or (data.eval_file if self.split_name == data.eval_split else None)
        self.split = load_sft_split(data.dataset, self.split_name, data_file, config_name=data.dataset_config,
                                    max_samples=self.options.limit)  # fmt: skip
        self.runs = {}

    def evaluate(self, described: dict, run, posterior) -> None:
        from ...evaluation.sft import sft_batches
        from ...rundir import optimizer_name
        from ...sft.likelihood import predictive_losses

        options, split = self.options, self.split
        logger.info("%s: %s %s (%d rows)", described["label"], split.source, self.split_name, len(split.dataset))
        batches = sft_batches(run, split, options.batch_size)
        metrics = predictive_losses(run.model, batches, posterior, self.num_samples if posterior is not None else 0,
                                    options.seed)  # fmt: skip
        fraction, temperature = options.prune_fractions[0], options.temperatures[0]
        self.runs[described["label"]] = {
            "dir": described["dir"], "optimizer": optimizer_name(run.recipe), "posterior": posterior is not None,
            **self.run_record(run, posterior, fraction, temperature),
            "metrics": metrics,
        }  # fmt: skip

    def summary(self) -> dict:
        return {
            "objective": self.recipe.objective,
            "split": self.split_name,
            "data": self.split.as_dict(),
            "runs": self.runs,
        }

    def protocol(self) -> dict:
        return {"unit": "sequence", "num_samples": self.num_samples, "seed": self.options.seed,
                "loss": "nats per target token; sampled: -sum over documents of log mean_s p_s(y|x), over the "
                        "target tokens; expected_loss: the samples' own mean loss"}  # fmt: skip

    def tables(self, result: dict) -> tuple[str, str]:
        from ...evaluation.sft import sft_table

        table = sft_table(result["runs"])
        rows = len(self.split.dataset)
        header = f"{self.split.source} {self.split_name} ({rows} rows): validation loss per target token"
        return table, f"{header}\n\n{table}\n"
