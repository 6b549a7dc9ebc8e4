"""`objective: choice`: multiple-choice task examples -> ChoiceTrainer -> choice probabilities of the saved
artifact on the eval split (metrics.json, predictions.jsonl) and the posterior's and predictive's diagnostics."""

from __future__ import annotations

import logging

from .steps import TrainSteps, metrics_footer

logger = logging.getLogger(__name__)


class ChoiceSteps(TrainSteps):
    def load_data(self) -> None:
        from ...tasks import get_protocol, load_split

        data, run = self.recipe.data, self.recipe.run
        self.preset = get_protocol(run.protocol)
        self.train_split = load_split(data.dataset, data.train_split, data.train_file, data.max_train_samples,
                                      protocol=self.preset)  # fmt: skip
        self.eval_split = load_split(data.dataset, data.eval_split, data.eval_file, data.max_eval_samples,
                                     protocol=self.preset)  # fmt: skip

    def prepare(self, tokenizer) -> None:
        from ...choice import ChoiceCollator, choice_rows, format_examples
        from ...choice.collator import count_truncated

        data, model_args = self.recipe.data, self.recipe.model
        # The prompts as this model sees them (chat template or plain) and answers spelled as single tokens.
        self.train_examples = format_examples(self.train_split.examples, tokenizer, model_args)
        self.eval_examples = format_examples(self.eval_split.examples, tokenizer, model_args)
        self.tokenizer = tokenizer
        self.collator = ChoiceCollator(tokenizer, data.max_length)
        self.truncated = {key: count_truncated(tokenizer, examples, data.max_length, f"{data.dataset} {split.split}")
                          for key, examples, split in (("train", self.train_examples, self.train_split),
                                                       ("eval", self.eval_examples, self.eval_split))}  # fmt: skip
        self.collator(choice_rows(self.train_examples[:1] + self.eval_examples[:1]))  # resolves the answer tokens
        logger.info("%s: %d train / %d eval examples", data.dataset, len(self.train_examples), len(self.eval_examples))

    def trainer_inputs(self) -> dict:
        import datasets
        import torch

        from ...choice import choice_rows
        from ...evaluation.metrics import calibration_metrics

        def compute_metrics(prediction):
            logits = torch.as_tensor(prediction.predictions).double()
            return calibration_metrics(torch.softmax(logits, dim=-1), torch.as_tensor(prediction.label_ids),
                                       ece_edges=self.preset.ece_edges)  # fmt: skip

        return {"train_dataset": datasets.Dataset.from_list(choice_rows(self.train_examples)),
                "eval_dataset": datasets.Dataset.from_list(choice_rows(self.eval_examples)),
                "data_collator": self.collator, "compute_metrics": compute_metrics}  # fmt: skip

    def score(self, trainer, model, posterior, num_samples: int) -> dict:
        from ...evaluation.kinds.choice import score_split, split_metrics
        from ...evaluation.plan import plan_for_training
        from ...evaluation.predict import protocol

        data = self.recipe.data
        # What `ivon-lora eval` resolves for the finished run, scored through the same call (every rank scores its
        # shard of the examples; all of them receive the gathered probabilities).
        plan = plan_for_training(self.recipe, "multiple_choice", num_samples)
        self.predictions = score_split(plan, model, self.tokenizer, self.eval_examples, posterior, data.max_length)
        self.ece_bins = list(plan.ece_bins)  # the protocol's headline ECE is always there
        self.metrics = split_metrics(plan, self.predictions, self.preset)
        return {
            "task": data.dataset,
            "split": data.eval_split,
            "plan": plan.as_dict(),
            "protocol": protocol(self.preset, num_samples, self.ece_bins, self.recipe.model.answer_scoring),
            "data": {"train": {**self.train_split.as_dict(), "truncated": self.truncated["train"]},
                     "eval": {**self.eval_split.as_dict(), "truncated": self.truncated["eval"]}},
            "metrics": self.metrics,
        }  # fmt: skip

    def diagnostics(self, posterior) -> tuple[dict, dict]:
        from ...diagnostics import diagnose

        diagnostics = diagnose(posterior, self.predictions.mean, self.predictions.samples)
        return diagnostics, {"predictive": diagnostics.get("predictive"), "warnings": diagnostics["warnings"],
                             "hess_at_init_share": diagnostics["posterior"]["hess_at_init_share"]}  # fmt: skip

    def describe_run(self) -> str:
        return self.recipe.data.dataset

    def write(self, final_dir: str) -> None:
        import os

        from ...filenames import PREDICTIONS_NAME
        from ...evaluation.report import write_jsonl

        write_jsonl(os.path.join(final_dir, PREDICTIONS_NAME), self.predictions.rows())

    def log_metrics(self) -> None:
        from ...evaluation.plots import summary_line

        rows = [("mean", self.metrics["mean"])]
        if "sampled" in self.metrics:
            rows.append((f"{self.metrics['sampled']['samples']} samples", self.metrics["sampled"]))
        for name, values in rows:
            logger.info("%-10s %s", name, summary_line(values, self.ece_bins))

    @staticmethod
    def card_lines(metrics: dict, has_posterior: bool) -> list[str]:
        from ...evaluation.metrics import table_columns
        from ...evaluation.report import predictives, table_cells

        m = metrics["metrics"]
        columns = table_columns(metrics["protocol"].get("ece_bins", ()), summary_only=True)
        lines = ["", f"## Metrics ({metrics['task']}, split {metrics['split']}, {m['num_examples']} examples)", "",
                 f"| predictive | {' | '.join(columns)} |", "|---" * (1 + len(columns)) + "|"]  # fmt: skip
        for name, values in predictives(m):
            name = "posterior mean" if name == "mean" else name
            lines.append(f"| {name} | {' | '.join(table_cells(values, columns))} |")
        return lines + metrics_footer(metrics)
