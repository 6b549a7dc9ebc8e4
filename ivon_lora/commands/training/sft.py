"""`objective: sft`: rows -> TRL's SFT with IVON -> validation loss / perplexity of the saved artifact at the mean
and of the S-sample predictive (metrics.json), and the posterior's diagnostics."""

from __future__ import annotations

import logging

from .steps import TrainSteps, metrics_footer

logger = logging.getLogger(__name__)


class SFTSteps(TrainSteps):
    def load_data(self) -> None:
        from ...sft.data import load_sft_split

        data = self.recipe.data
        self.train_split = load_sft_split(
            data.dataset,
            data.train_split,
            data.train_file,
            config_name=data.dataset_config,
            max_samples=data.max_train_samples,
        )
        self.eval_split = load_sft_split(
            data.dataset,
            data.eval_split,
            data.eval_file,
            config_name=data.dataset_config,
            max_samples=data.max_eval_samples,
        )

    def prepare(self, tokenizer) -> None:
        from ...sft.data import check_chat_template

        for split in (self.train_split, self.eval_split):
            check_chat_template(split, tokenizer, self.recipe.model.model_name_or_path,
                                self.recipe.training.chat_template_path)  # fmt: skip
        logger.info("%s: %d train / %d eval rows", self.train_split.source, len(self.train_split.dataset),
                    len(self.eval_split.dataset))  # fmt: skip

    def trainer_inputs(self) -> dict:
        return {"train_dataset": self.train_split.dataset, "eval_dataset": self.eval_split.dataset}

    def score(self, trainer, model, posterior, num_samples: int) -> dict:
        from ...evaluation.kinds.sft import sft_protocol
        from ...sft.likelihood import predictive_losses

        seed = self.recipe.run.eval_seed
        self.metrics = predictive_losses(model, trainer.evaluation_batches(), posterior, num_samples, seed,
                                         **trainer.document_gathering())  # fmt: skip
        return {
            "objective": self.recipe.objective,
            "dataset": self.eval_split.source,
            "split": self.eval_split.split,
            "protocol": sft_protocol(num_samples, seed),
            "data": {"train": self.train_split.as_dict(), "eval": self.eval_split.as_dict()},
            "metrics": self.metrics,
        }

    def diagnostics(self, posterior) -> tuple[dict, dict]:
        from ...diagnostics import diagnose

        diagnostics = diagnose(posterior)
        return diagnostics, {"warnings": diagnostics["warnings"],
                             "hess_at_init_share": diagnostics["posterior"]["hess_at_init_share"]}  # fmt: skip

    def describe_run(self) -> str:
        return self.eval_split.source

    def log_metrics(self) -> None:
        for name, values in self.metrics.items():
            extra = f" (expected over samples {values['expected_loss']:.4f})" if name == "sampled" else ""
            label = f"{values['samples']} samples" if name == "sampled" else name
            logger.info("%-10s loss %.4f perplexity %.3f%s", label, values["loss"], values["perplexity"], extra)

    @staticmethod
    def card_lines(metrics: dict, has_posterior: bool) -> list[str]:
        from ...evaluation.sft import sft_table

        data = metrics["data"]["eval"]
        return ["", f"## Validation loss ({metrics['dataset']}, split {metrics['split']}, {data['rows']} rows)", "",
                sft_table({"this run": {"metrics": metrics["metrics"], "posterior": has_posterior}}),
                *metrics_footer(metrics)]  # fmt: skip
