"""IVON for the Hugging Face Trainer: `IVONTrainerMixin` and `IVONTrainer` (any objective; see `ivon_lora.choice`).

What changes compared with the Trainer's usual step (IVON: Shen et al., arXiv 2402.17641, Algorithm 1; several
processes: docs/guides/multi-gpu.md):

* every micro-batch is one fresh posterior sample: its forward and backward run inside
  `IVON.sampled_params(train=True)`, which records that sample's gradient and clears `.grad`, so gradient
  accumulation averages per-sample gradients instead of summing them into one;
* IVON averages the recorded samples itself, so each sample's gradient must be that micro-batch's share of the
  full batch's gradient times the number of micro-batches. For a loss that is a per-micro-batch mean (one target
  per example: the multiple-choice objective, `loss_is_scaled_for_ga = False`) that is the mean itself, not divided
  by the accumulation steps. For a token-level loss that the Trainer normalises by the accumulated batch's token
  count (`num_items_in_batch`: causal-LM / SFT losses, counted over every rank with
  `average_tokens_across_devices`), the gradient is multiplied by the number of micro-batches: each sample then
  weighs by its own number of loss tokens. Either way 4 x batch 2 equals 1 x batch 8 (on sequences of different
  lengths for the token-level loss), for the mean gradient and the Hessian estimate;
* `max_grad_norm` clips each sample's gradient inside the sampling context, where IVON reads it (clipping after
  the context, where the Trainer does it, would have no effect);
* fp16 mixed precision is refused: the GradScaler's scaled gradients would be recorded as they are.

Data parallel (several processes, `torchrun` / `accelerate launch`; see `ivon_lora.optim` for why this choice):
each rank draws its own noise and `IVON.step()` averages both the gradients and noise x gradients over the ranks
(W ranks = W posterior samples per step). DDP's own gradient all-reduce must then not run, so every micro-batch's
backward runs under `accelerator.no_sync(model)` (the Trainer itself only skips the sync for the non-final
micro-batches). An IVON that does not synchronise (`data_parallel=False`) under a multi-process Trainer is an
error: with DDP averaging per-rank-noise gradients the Hessian would be underestimated by the world size.
Sharded or otherwise non-DDP parallelism (FSDP, DeepSpeed, tensor/context parallel, models sharded at load
time) is refused with optim='ivon': those shard the parameters into DTensors, reduce-scatter gradients only at
the last micro-batch and keep optimizer state per shard, none of which IVON supports yet.

With `optim` set to any transformers optimizer name (e.g. `adamw_torch`), the Trainer behaves as usual, so
the same code and recipes train the baselines.

Continual finetuning: `prior=` a previous run's `Posterior` N(m_A, v_A) makes it IVON's prior for the adapter
(`IVON.set_prior` with mean m_A and precision 1 / (ess * v_A), on the new run's ess scale); the adapter's weights
are the caller's to set (`ivon_lora.continual.apply_starting_point`). `prior_provenance` is recorded in every saved
posterior_config.json (checkpoints too) under `PRIOR_RUN_KEY`.

The mixin knows no objective: the evaluation with posterior samples (`ivon_eval_samples`) runs the Trainer's
evaluation loop once per sample (`posterior_sample_outputs`) and leaves combining the outputs into a predictive
to the objective's `sampled_evaluation_metrics` hook (the multiple-choice one: `ivon_lora.choice.ChoiceTrainer`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sized

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import Trainer
from transformers.trainer_callback import ExportableState, TrainerCallback
from transformers.trainer_utils import EvalLoopOutput, get_last_checkpoint
from transformers.training_args import ParallelMode

from ..errors import TrainingDivergedError
from ..optim import IVON
from ..posterior import PRIOR_RUN_KEY, Posterior
from .config import DEFAULT_INITIAL_STD, WIDE_INITIAL_STD, IVONTrainingArguments, default_ess

logger = logging.getLogger(__name__)


def _unwrap_optimizer(optimizer):
    # Accelerate wraps the optimizer in `AcceleratedOptimizer`; the raw one is `.optimizer`.
    return getattr(optimizer, "optimizer", optimizer)


class TrainLossTotal(TrainerCallback, ExportableState):
    """The sum of the training losses so far, kept in every checkpoint's trainer_state.json: a resumed run's
    `train_loss` is then the mean over all its steps, equal to the uninterrupted run's (the Trainer's own counts only
    the steps since the resume)."""

    def __init__(self, total: float = 0.0):
        self.total = total

    def state(self) -> dict:
        return {"args": {}, "attributes": {"total": self.total}}


class IVONTrainerMixin:
    """Gives any `transformers.Trainer` subclass IVON: `class MyTrainer(IVONTrainerMixin, MyBaseTrainer)`.

    Needs `IVONTrainingArguments` (or a config class inheriting it, e.g. `class MyConfig(IVONTrainingArguments,
    SFTConfig)`); `args=None` gives IVON's defaults. With `args.optim != 'ivon'` every hook falls through to the
    base class.

    Args:
        model: the model to train, usually a `peft.PeftModel`: IVON optimizes its trainable parameters (the adapter).
        args: an `IVONTrainingArguments` (or a class inheriting it); None gives `default_args_class`'s defaults.
        *more: the base Trainer's further positional arguments (data collator, datasets, ...).
        prior: a previous run's `Posterior`, made IVON's prior for the adapter (continual finetuning); needs
            `optim='ivon'`. The adapter's starting weights are the caller's to set.
        prior_provenance: what to record about the prior's run in every saved `posterior_config.json`.
        **kwargs: the base Trainer's keyword arguments (`train_dataset`, `eval_dataset`, `data_collator`, ...).

    Raises:
        TypeError: `args` is not an `IVONTrainingArguments` (a plain `TrainingArguments` would train with AdamW).
        ValueError: a `prior` with an optimizer other than IVON.
    """

    # The config `args=None` gives (its defaults); a trainer whose base needs a config of its own (TRL's SFTTrainer
    # converts any other TrainingArguments into its SFTConfig) names a class inheriting both.
    default_args_class: type[IVONTrainingArguments] = IVONTrainingArguments

    def __init__(self, model=None, args=None, *more, prior: Posterior | None = None, prior_provenance: dict | None = None,
                 **kwargs):  # fmt: skip
        if args is None:
            args = self.default_args_class(output_dir="trainer_output")
        if not isinstance(args, IVONTrainingArguments):
            # A plain TrainingArguments has no `optim='ivon'`: the Trainer would silently train with AdamW.
            raise TypeError(
                f"{type(self).__name__} needs IVONTrainingArguments, got {type(args).__name__}. Pass "
                "ivon_lora.IVONTrainingArguments, or, to keep another config's fields (e.g. TRL's SFTConfig), a class "
                f"that inherits both: class IVON{type(args).__name__}(IVONTrainingArguments, {type(args).__name__})."
            )
        if prior is not None and not getattr(args, "use_ivon", False):
            raise ValueError(f"A prior needs optim='ivon', got optim={args.optim!r}")
        super().__init__(model, args, *more, **kwargs)
        self._ivon_grad_norms: list[torch.Tensor] = []  # pre-clip norms of the current step's samples
        self._step_losses: list[torch.Tensor] = []  # the current step's micro-batch (and sample) losses, on device
        self.ivon_prior = prior
        self.ivon_prior_provenance = prior_provenance
        # The sum of what training_step returns (what the Trainer sums for its loss), in float64 on the device, from
        # the run's first step: a resume starts it from the checkpoint's TrainLossTotal.
        self._loss_total: torch.Tensor | None = None
        self._loss_total_from_start = True
        self._loss_total_saved = TrainLossTotal()
        self.add_callback(self._loss_total_saved)

    def _uses_ivon(self) -> bool:
        return getattr(self.args, "use_ivon", False)

    @property
    def ivon_optimizer(self) -> IVON | None:
        optimizer = _unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        return optimizer if isinstance(optimizer, IVON) else None

    def create_optimizer(self, model=None):
        if not self._uses_ivon():
            return super().create_optimizer(model)
        unsupported = self._ivon_unsupported_parallelism()
        if unsupported is not None:
            raise ValueError(
                f"optim='ivon' does not support {unsupported}: IVON samples, records and updates whole (unsharded) "
                "parameters on every micro-batch, while sharded training keeps the parameters as DTensor shards, "
                "reduce-scatters gradients only at the last micro-batch and saves optimizer state per shard. Use "
                "plain data parallelism instead (accelerate launch / torchrun without FSDP or DeepSpeed, e.g. "
                "with a 4-bit or 8-bit base model to fit memory), or a transformers optimizer."
            )
        if self.optimizer is None:
            model = self.model if model is None else model
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError("The model has no trainable parameters for IVON (did LoRA wrapping fail?)")
            args = self.args
            if args.ivon_ess is not None:
                ess = args.ivon_ess
            else:
                ess = default_ess(self.likelihood_size(), args.ivon_hess_init, args.weight_decay)
            initial_std = (ess * (args.ivon_hess_init + args.weight_decay)) ** -0.5
            if initial_std > WIDE_INITIAL_STD:
                logger.warning(
                    "ivon_ess=%g with ivon_hess_init=%g gives an initial posterior std of %.2g: LoRA weights sampled "
                    "that wide usually swamp the pretrained model, the gradients explode and training fails. "
                    "IVON-LoRA starts at %.3g (ess 1e6, hess_init 1e-3); raise ivon_ess or ivon_hess_init.",
                    ess, args.ivon_hess_init, initial_std, DEFAULT_INITIAL_STD,
                )  # fmt: skip
            self.optimizer = IVON(
                params,
                lr=args.learning_rate,
                ess=ess,
                hess_init=args.ivon_hess_init,
                beta1=args.ivon_beta1,
                beta2=args.ivon_beta2,
                weight_decay=args.weight_decay,
                mean_weight_decay=args.ivon_mean_weight_decay,
                mc_samples=args.ivon_mc_samples,
                clip_radius=args.ivon_clip_radius,
                rescale_lr=args.ivon_rescale_lr,
                seed=args.ivon_seed if args.ivon_seed is not None else args.seed,
                # Per-rank noise, with g and eps*g averaged over the ranks in step() (docs/guides/multi-gpu.md).
                data_parallel=self._data_parallel_world_size() > 1,
            )
            if self.ivon_prior is not None:
                self._set_ivon_prior(self.optimizer, model)
        self._check_ivon_synchronises(self.optimizer)
        return self.optimizer

    def _set_ivon_prior(self, optimizer: IVON, model) -> None:
        """The previous posterior N(m_A, v_A) as the prior of every adapter parameter: mean m_A, precision
        1 / (ess * v_A) (= ess_A * (h_A + wd_A) / ess), in place of weight_decay."""
        model = self.accelerator.unwrap_model(model)
        for group in optimizer.param_groups:
            if group["mean_weight_decay"] is not None:
                raise ValueError("A prior (prior_from) cannot be combined with ivon_mean_weight_decay: set it to None")
            for key, p in self.ivon_prior.bind(model):
                if any(p is q for q in group["params"]):
                    precision = (self.ivon_prior.variance[key].double() * group["ess"]).reciprocal()
                    optimizer.set_prior(p, self.ivon_prior.mean[key], precision)

    def likelihood_size(self) -> int:
        """How many terms the training loss averages over (ivon_ess's default, before its floor): the number of
        training examples here; an objective whose loss averages over something else (tokens) overrides it.

        Returns:
            The number of training examples.

        Raises:
            ValueError: the train dataset has no length (set `ivon_ess` instead).
        """
        if not isinstance(self.train_dataset, Sized):
            raise ValueError(
                f"ivon_ess is not set, and its default, the train set size, is unknown: the train dataset "
                f"({type(self.train_dataset).__name__}) has no length. Set ivon_ess to the number of training "
                "examples (the effective sample size: it sets the posterior's width)."
            )
        return len(self.train_dataset)

    def _data_parallel_world_size(self) -> int:
        return self.args.world_size if self.args.parallel_mode == ParallelMode.DISTRIBUTED else 1

    def _ivon_unsupported_parallelism(self) -> str | None:
        """What parallelism IVON cannot train under in this Trainer, or None."""
        from accelerate.utils import DistributedType

        distributed_type = self.accelerator.distributed_type
        if self.args.fsdp or getattr(self, "is_fsdp_enabled", False) or distributed_type == DistributedType.FSDP:
            return "FSDP (args.fsdp / an Accelerate FSDP config)"
        if getattr(self, "is_deepspeed_enabled", False) or distributed_type == DistributedType.DEEPSPEED:
            return "DeepSpeed"
        if getattr(self, "is_distributed_loading_by_transformers", False):
            return "a model sharded at load time (from_pretrained(distributed_config=...))"
        if distributed_type in (DistributedType.XLA, DistributedType.MEGATRON_LM):
            return f"{distributed_type.value} training"
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        if parallelism is not None and max(getattr(parallelism, "tp_size", 1), getattr(parallelism, "cp_size", 1)) > 1:
            return "tensor or context parallelism"
        return None

    def _check_ivon_synchronises(self, optimizer, model=None) -> None:
        """Raise unless IVON averages its samples over exactly the Trainer's data-parallel processes."""
        ivon = _unwrap_optimizer(optimizer)
        if isinstance(model, DistributedDataParallel):
            world_size = model.process_group.size()
        else:
            world_size = self._data_parallel_world_size()
        if not isinstance(ivon, IVON) or ivon.data_parallel_world_size == world_size:
            return
        raise ValueError(
            f"This Trainer runs {world_size} data-parallel processes, but its IVON optimizer averages samples over "
            f"{ivon.data_parallel_world_size}. Each rank draws its own noise, so IVON must average both the "
            "gradients and noise x gradients over the ranks itself; DDP's gradient averaging alone would "
            "underestimate the Hessian by the world size. Let the Trainer build IVON (optim='ivon'), or build it "
            "with data_parallel=None (the default) or True, after torch.distributed is initialized."
        )

    def _diverged(self, what: str) -> TrainingDivergedError:
        """The error that stops a diverged run: which step, what went non-finite, what survives, what to change."""
        step = self.state.global_step + 1
        output_dir = self.args.output_dir
        last = get_last_checkpoint(output_dir) if output_dir and os.path.isdir(output_dir) else None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        return TrainingDivergedError(
            f"Training diverged at step {step}: {what} is NaN or inf; {kept}, and no final adapter or posterior was "
            "written. Lower learning_rate (or, for IVON, keep ivon_clip_radius finite, e.g. 1e-3) and retrain."
        )

    def _check_finite(self, losses: list[torch.Tensor], grad_norms: list[torch.Tensor]) -> None:
        """Raise if a loss or a gradient norm of this optimizer step is NaN or inf: one host sync per step (the
        values stay on the device while the micro-batches run), before the optimizer applies the step."""
        values = [value.detach().float().reshape(()) for value in (*losses, *grad_norms)]
        if not values or bool(torch.isfinite(torch.stack([v.to(values[0].device) for v in values])).all()):
            return
        loss_finite = all(bool(torch.isfinite(loss)) for loss in losses)
        raise self._diverged("the training loss" if not loss_finite else "the gradient")

    def _check_step_finite(self, grad_norms: list[torch.Tensor]) -> None:
        losses, self._step_losses = self._step_losses, []
        self._check_finite(losses, grad_norms)

    def _check_finite_weights(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not all(bool(p.isfinite().all()) for p in model.parameters() if p.requires_grad):
            raise self._diverged("a trained weight")

    def _save_checkpoint(self, model, trial):
        self._check_finite_weights()  # a checkpoint of NaN weights would be the one a resume picks
        self._loss_total_saved.total = self._world_loss_total()  # every rank calls this: the reduce is collective
        return super()._save_checkpoint(model, trial)

    def train(self, *args, **kwargs):
        self._loss_total = None
        return super().train(*args, **kwargs)

    def _add_to_loss_total(self, loss: torch.Tensor) -> None:
        if self._loss_total is None:  # the first step of this train(): a resumed state holds the total so far
            saved = (self.state.stateful_callbacks or {}).get(TrainLossTotal.__name__)
            resumed = self.state.global_step > 0
            self._loss_total_from_start = not resumed or saved is not None
            start = saved["attributes"]["total"] if resumed and saved is not None else 0.0
            self._loss_total = torch.tensor(start, dtype=torch.float64, device=loss.device)
        self._loss_total += loss.detach().to(torch.float64)

    def _world_loss_total(self) -> float:
        """The loss total, averaged over the ranks as the Trainer averages its logged loss."""
        if self._loss_total is None:
            return self._loss_total_saved.total
        if self.args.world_size > 1:
            return float(self.accelerator.reduce(self._loss_total.clone(), reduction="mean"))
        return float(self._loss_total)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "train_loss" in logs and self._loss_total is not None:  # the end of train(), on every rank
            if self._loss_total_from_start:
                logs["train_loss"] = self._world_loss_total() / max(self.state.global_step, 1)
            else:
                logger.warning("train_loss covers only the steps since the resume: the checkpoint was saved by an "
                               "older ivon-lora, which did not keep the loss of the steps before it")  # fmt: skip
        return super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._uses_ivon():
            loss = super().training_step(model, inputs, num_items_in_batch)
            self._step_losses.append(loss.detach())
            self._add_to_loss_total(loss)
            return loss
        ivon = self.ivon_optimizer
        self._check_ivon_synchronises(ivon, model)
        params = [p for group in ivon.param_groups for p in group["params"]]
        token_weighted = self._loss_is_normalised_by_batch_items(num_items_in_batch)
        # A token-level loss arrives as (this micro-batch's loss tokens) / (the accumulated batch's, all ranks);
        # IVON divides the sum of the recorded samples by their number, so each sample's gradient is multiplied by
        # the number of micro-batches here: the average is then the full batch's token-level gradient.
        grad_scale = float(self.current_gradient_accumulation_steps) if token_weighted else 1.0
        # The Trainer must not divide the loss by the accumulation steps: IVON averages the samples in step().
        scaled_for_ga = self.loss_is_scaled_for_ga
        self.loss_is_scaled_for_ga = True
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        losses = []
        try:
            # IVON averages g and eps*g over the ranks in step(): DDP must not all-reduce the gradients, not even
            # on the last micro-batch, where the Trainer lets it (nested in the Trainer's own no_sync: no-op).
            with self.accelerator.no_sync(model):
                for _ in range(self.args.ivon_mc_samples):
                    with ivon.sampled_params(train=True):
                        items = num_items_in_batch if token_weighted else None
                        losses.append(super().training_step(model, inputs, items))
                        if grad_scale != 1.0:
                            torch._foreach_mul_([p.grad for p in params if p.grad is not None], grad_scale)
                        self._ivon_grad_norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm).detach())
        finally:
            self.loss_is_scaled_for_ga = scaled_for_ga
        self._step_losses += [loss.detach() for loss in losses]
        # The Trainer sums the returned losses over the accumulation steps for logging: a token-level loss is
        # already this micro-batch's share of the accumulated batch's, a per-micro-batch mean is not.
        loss = torch.stack(losses).mean()
        loss = loss if token_weighted else loss / self.current_gradient_accumulation_steps
        self._add_to_loss_total(loss)
        return loss

    def _loss_is_normalised_by_batch_items(self, num_items_in_batch) -> bool:
        """Whether the objective's loss is normalised by the accumulated batch's item count (the Trainer's rule).

        An objective that sets `loss_is_scaled_for_ga` says so itself (the multiple-choice one: False, a
        per-micro-batch mean); otherwise, as in `Trainer.training_step`, the loss is normalised by
        `num_items_in_batch` when the model takes loss kwargs (causal LMs, TRL's SFT loss) or a
        `compute_loss_func` is given.
        """
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga) and num_items_in_batch is not None
        if num_items_in_batch is None:
            return False
        return bool(self.model_accepts_loss_kwargs) or self.compute_loss_func is not None

    def _clip_grad_norm(self, model):
        if not self._uses_ivon():
            return super()._clip_grad_norm(model)
        return None  # each sample was clipped inside its sampling context

    def _get_grad_norm(self, model, grad_norm=None):
        # Called once per optimizer step, before it: the step's divergence check goes here.
        if not self._uses_ivon():
            grad_norm = super()._get_grad_norm(model, grad_norm)
            self._check_step_finite([torch.as_tensor(grad_norm)] if grad_norm is not None else [])
            return grad_norm
        norms = self._ivon_grad_norms
        self._check_step_finite(norms)
        # Logged as the mean pre-clip norm of the step's per-sample gradients (of rank 0's samples, under DDP).
        mean_norm = torch.stack(norms).mean() if norms else torch.tensor(0.0)
        norms.clear()
        return mean_norm

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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the model as the base Trainer does (the PEFT adapter: the posterior mean) and, with IVON, the
        posterior next to it: `posterior.safetensors` (the variances) and `posterior_config.json`.

        Args:
            output_dir: where to save; None is `args.output_dir`.
            _internal_call: the base Trainer's flag for its own calls (checkpoints).

        Raises:
            ivon_lora.errors.TrainingDivergedError: a trained weight is NaN or inf (nothing is written).
        """
        self._check_finite_weights()
        super().save_model(output_dir, _internal_call)
        ivon = self.ivon_optimizer
        # Only the saving process writes; the posterior is read from local state (identical on every rank, no
        # collective), so the other ranks need not take part.
        if ivon is not None and self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            posterior = Posterior.from_optimizer(ivon, model)
            if self.ivon_prior_provenance is not None:
                posterior.config[PRIOR_RUN_KEY] = self.ivon_prior_provenance
            posterior.save(output_dir or self.args.output_dir)


class IVONTrainer(IVONTrainerMixin, Trainer):
    """`transformers.Trainer` training with IVON (see `IVONTrainerMixin`); `args` defaults to IVON defaults.

    Example:
        ```python
        args = IVONTrainingArguments(output_dir="out", learning_rate=0.03, ivon_ess=1e6, max_steps=10_000)
        trainer = IVONTrainer(model=peft_model, args=args, train_dataset=dataset, data_collator=collator)
        trainer.train()
        trainer.save_model()  # the adapter, posterior.safetensors and posterior_config.json
        ```

    Args:
        model: the model to train, usually a `peft.PeftModel`.
        args: an `IVONTrainingArguments`; None gives IVON's defaults.
        *more: `transformers.Trainer`'s further positional arguments.
        prior: a previous run's `Posterior` as IVON's prior (continual finetuning).
        prior_provenance: what to record about the prior's run in the saved posterior.
        **kwargs: `transformers.Trainer`'s keyword arguments (`train_dataset`, `data_collator`, ...).
    """
