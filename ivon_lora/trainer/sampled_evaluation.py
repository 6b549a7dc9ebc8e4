"""Evaluation with posterior samples under the IVON Trainer: `evaluate` adds the sampled metrics to the usual ones.

The mixin knows no objective: with `ivon_eval_samples` = S > 0 it runs the Trainer's evaluation loop once per
posterior sample (`posterior_sample_outputs`) and leaves combining the outputs into a predictive to the objective's
`sampled_evaluation_metrics` hook (the multiple-choice one: `ivon_lora.choice.ChoiceTrainer`); `ivon_loo_eval` adds
the objective's leave-one-out estimate (`loo_nll`). Mixed into `IVONTrainerMixin`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers.trainer_utils import EvalLoopOutput

from ..posterior import Posterior


class SampledEvaluationMixin:
    """`evaluate` at the posterior mean and with posterior samples (see the module docstring)."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The usual evaluation (at the posterior mean), plus, with `ivon_eval_samples` = S > 0, the objective's
        metrics of the S-sample predictive as `{prefix}_sampled_*` (`sampled_evaluation_metrics`).

        Args:
            eval_dataset: the dataset (or dict of datasets) to evaluate; None is the Trainer's `eval_dataset`.
            ignore_keys: output keys to ignore, as in `transformers.Trainer.evaluate`.
            metric_key_prefix: the prefix of the metric names.

        Returns:
            The metrics, as `transformers.Trainer.evaluate` returns them, with the sampled ones (and, with
            `ivon_loo_eval`, `{prefix}_loo_nll`) added.
        """
        with_loo = getattr(self.args, "ivon_loo_eval", False) and self.ivon_optimizer is not None
        if isinstance(eval_dataset if eval_dataset is not None else self.eval_dataset, dict):
            # The Trainer evaluates a dict of datasets by calling `evaluate` once per dataset (with the prefix
            # `{prefix}_{name}`): each of those calls adds its own sampled metrics; the LOO estimate, which reads
            # the train set only, is computed once, here.
            self._evaluating_named_sets = True
            try:
                metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            finally:
                self._evaluating_named_sets = False
            return {**metrics, **(self._loo_metrics(metric_key_prefix) if with_loo else {})}
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if with_loo and not getattr(self, "_evaluating_named_sets", False):
            metrics.update(self._loo_metrics(metric_key_prefix))
        num_samples = getattr(self.args, "ivon_eval_samples", 0)
        if self.ivon_optimizer is None or num_samples == 0:
            return metrics
        # The objective's hook (not defined here, so that a mixin of either order finds the objective's):
        # sampled_evaluation_metrics(eval_dataset, num_samples, ignore_keys, metric_key_prefix) -> metrics of the
        # predictive averaged over the samples, from `posterior_sample_outputs`.
        hook = getattr(self, "sampled_evaluation_metrics", None)
        if hook is None:
            raise NotImplementedError(
                f"ivon_eval_samples={num_samples} needs an objective that says how posterior samples combine into "
                f"a predictive: {type(self).__name__} defines no sampled_evaluation_metrics (the multiple-choice "
                "objective's ivon_lora.choice.ChoiceTrainer does). Set ivon_eval_samples=0 to evaluate at the mean."
            )
        sampled = hook(eval_dataset, num_samples, ignore_keys, metric_key_prefix)
        sampled = {f"{metric_key_prefix}_sampled_{k}": v for k, v in sampled.items()}
        if sampled:
            self.log(sampled)
        return {**metrics, **sampled}

    def _loo_metrics(self, metric_key_prefix: str) -> dict:
        """{prefix}_loo_nll from the objective's hook `loo_nll(posterior)` (train set, current posterior), logged."""
        hook = getattr(self, "loo_nll", None)
        if hook is None:
            raise NotImplementedError(f"ivon_loo_eval needs an objective with a loo_nll hook; {type(self).__name__} "
                                      "has none (the multiple-choice ChoiceTrainer has)")  # fmt: skip
        model = self.accelerator.unwrap_model(self.model)
        loo = {f"{metric_key_prefix}_loo_nll": hook(Posterior.from_optimizer(self.ivon_optimizer, model))}
        self.log(loo)
        return loo

    def posterior_sample_outputs(self, eval_dataset, num_samples: int, ignore_keys=None,
                                 metric_key_prefix: str = "eval") -> Iterator[EvalLoopOutput]:  # fmt: skip
        """The evaluation loop's output (predictions, label_ids) under each of `num_samples` posterior samples.

        The samples come from a generator of their own, seeded by `seed`, so evaluating never moves the
        optimizer's noise stream (training and resume stay as without evaluation), and every rank of a
        data-parallel run draws the same sample for its shard. `compute_metrics` is not called per sample.

        Args:
            eval_dataset: the dataset to evaluate.
            num_samples: S, the posterior samples.
            ignore_keys: output keys to ignore, as in `transformers.Trainer.evaluate`.
            metric_key_prefix: the prefix of the metric names.

        Yields:
            One `EvalLoopOutput` per posterior sample, the model holding that sample while it is computed.
        """
        model = self.accelerator.unwrap_model(self.model)
        # Bound once: mean and std stay cached on the adapter's device between samples.
        sampler = Posterior.from_optimizer(self.ivon_optimizer, model).sampler(
            model, generator=torch.Generator().manual_seed(self.args.seed)
        )
        dataloader = self.get_eval_dataloader(eval_dataset)
        compute_metrics, self.compute_metrics = self.compute_metrics, None
        try:
            for _ in range(num_samples):
                with sampler.sample():
                    output = self.evaluation_loop(dataloader, description="Posterior sample", prediction_loss_only=False,
                                                  ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)  # fmt: skip
                yield output
        finally:
            self.compute_metrics = compute_metrics
