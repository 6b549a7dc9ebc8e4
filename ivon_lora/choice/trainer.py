"""The multiple-choice objective in the Trainer: K-way cross-entropy loss, and its S-sample predictive.

`ChoiceTrainer` is what `ivon-lora train` builds: IVON (or, with optim != 'ivon', a transformers optimizer)
over the K-way loss. `ChoiceLossMixin` is the objective alone, for composing with another Trainer subclass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import EvalPrediction, Trainer

from ..trainer import IVONTrainerMixin
from .logits import choice_logits


class ChoiceLossMixin:
    """Trainer mixin: the loss is the K-way cross-entropy of `choice_logits`, averaged over the micro-batch."""

    # The loss is a per-micro-batch mean: let the Trainer divide by the accumulation steps as usual.
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = choice_logits(model, inputs)
        loss = F.cross_entropy(logits, inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            logits = choice_logits(model, inputs)
            loss = F.cross_entropy(logits, inputs["labels"])
        return loss.detach(), (None if prediction_loss_only else logits), inputs["labels"]

    def loo_nll(self, posterior) -> float:
        """The MPE's leave-one-out NLL estimate over the train set at `posterior` (exact variances; `ivon_loo_eval`)."""
        from .sensitivity import batches_sensitivity

        rows = list(self.train_dataset)
        size = self.args.per_device_eval_batch_size
        batches = [self.data_collator(rows[i : i + size]) for i in range(0, len(rows), size)]
        model = self.accelerator.unwrap_model(self.model)
        return batches_sensitivity(model, posterior, batches, [str(i) for i in range(len(rows))]).loo_nll()

    def sampled_evaluation_metrics(self, eval_dataset, num_samples: int, ignore_keys, metric_key_prefix) -> dict:
        """`compute_metrics` of the mean of the S posterior samples' K-way probability vectors.

        Only K answer logits per example reach the host, so the float64 softmax there is cheap. Without
        `compute_metrics` there is nothing to report: {}.
        """
        if self.compute_metrics is None:
            return {}
        probs_sum = labels = None
        for output in self.posterior_sample_outputs(eval_dataset, num_samples, ignore_keys, metric_key_prefix):
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            probs = torch.softmax(torch.as_tensor(logits).double(), dim=-1)
            probs_sum = probs if probs_sum is None else probs_sum + probs
            labels = output.label_ids
        # Log-probabilities are logits whose softmax is the averaged predictive itself.
        return self.compute_metrics(
            EvalPrediction(predictions=(probs_sum / num_samples).log().numpy(), label_ids=labels)
        )


class ChoiceTrainer(IVONTrainerMixin, ChoiceLossMixin, Trainer):
    """The multiple-choice objective, trained with IVON or (optim != 'ivon') a transformers optimizer."""


def choice_rows(examples) -> list[dict]:
    """`ChoiceExample`s as the rows of a `datasets.Dataset` that `ChoiceCollator` batches."""
    return [{"prompt": e.prompt, "answers": list(e.answers), "gold": e.gold, "scoring": e.scoring} for e in examples]
