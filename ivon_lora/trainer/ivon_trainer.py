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

Data parallel (several processes, `torchrun` / `accelerate launch`): each rank draws its own noise and
`IVON.step()` averages both the gradients and noise x gradients over the ranks, so every micro-batch's backward runs
under `accelerator.no_sync(model)` (the Trainer itself only skips the sync for the non-final micro-batches). Under
FSDP2 every micro-batch's gradient is reduce-scattered instead, and the posterior is gathered from the shards
(`fsdp.py`). Which parallelism is supported, what is refused and how that is checked: `parallelism.py`.

With `optim` set to any transformers optimizer name (e.g. `adamw_torch`), the Trainer behaves as usual, so
the same code and recipes train the baselines.

Continual finetuning: `prior=` a previous run's `Posterior` N(m_A, v_A) makes it IVON's prior for the adapter
(`IVON.set_prior` with mean m_A and precision 1 / (ess * v_A), on the new run's ess scale); the adapter's weights
are the caller's to set (`ivon_lora.continual.apply_starting_point`). `prior_provenance` is recorded in every saved
posterior_config.json (checkpoints too) under `PRIOR_RUN_KEY`.

The parts, one concern per module: this one builds IVON and runs its training step (sampling, accumulation,
clipping) and saves the posterior; `parallelism.py` says which parallelism IVON trains under; `run_health.py` holds
the divergence checks and the loss total kept across resumes; `sampled_evaluation.py` evaluates with posterior
samples (the objective's `sampled_evaluation_metrics` hook combines them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sized

import torch
from torch.distributed.tensor import DTensor
from transformers import Trainer

from ..optim import IVON
from ..posterior import PRIOR_RUN_KEY, Posterior
from .config import DEFAULT_INITIAL_STD, WIDE_INITIAL_STD, IVONTrainingArguments, default_ess
from .fsdp import gather_full_params, gathered_adapter_state_dict, gathered_posterior
from .parallelism import ParallelismMixin, unwrap_optimizer
from .run_health import RunHealthMixin
from .sampled_evaluation import SampledEvaluationMixin

logger = logging.getLogger(__name__)


class IVONTrainerMixin(SampledEvaluationMixin, RunHealthMixin, ParallelismMixin):
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
        self.ivon_prior = prior
        self.ivon_prior_provenance = prior_provenance
        self._init_run_health()

    def _uses_ivon(self) -> bool:
        return getattr(self.args, "use_ivon", False)

    @property
    def ivon_optimizer(self) -> IVON | None:
        optimizer = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        return optimizer if isinstance(optimizer, IVON) else None

    def create_optimizer(self, model=None):
        if not self._uses_ivon():
            return super().create_optimizer(model)
        unsupported = self._ivon_unsupported_parallelism()
        if unsupported is not None:
            raise ValueError(f"optim='ivon' does not support {unsupported}")
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
                # Under FSDP2 (None): each rank draws its own shards' noise, FSDP averages the gradients.
                data_parallel=None if self._fsdp_version() == 2 else self._data_parallel_world_size() > 1,
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
            # Under FSDP2 the opposite: every micro-batch's gradient must be reduce-scattered, where the Trainer
            # would defer it to the last micro-batch (IVON records each one on its shard).
            if self._fsdp_version() == 2:
                model.set_requires_gradient_sync(True)
                sync_context = contextlib.nullcontext()
            else:
                sync_context = self.accelerator.no_sync(model)
            with sync_context:
                for _ in range(self.args.ivon_mc_samples):
                    with ivon.sampled_params(train=True):
                        items = num_items_in_batch if token_weighted else None
                        losses.append(super().training_step(model, inputs, items))
                        if grad_scale != 1.0:
                            torch._foreach_mul_([p.grad for p in params if p.grad is not None], grad_scale)
                        norm = torch.nn.utils.clip_grad_norm_(params, max_norm).detach()
                        self._ivon_grad_norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
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
        ivon = self.ivon_optimizer
        output_dir = output_dir or self.args.output_dir
        if ivon is not None and ivon.sharded_world_size > 1:
            # FSDP2: the adapter and the posterior are gathered from the shards on every rank (the Trainer calls
            # save_model on every rank), only the LoRA tensors, never the sharded base; the main process writes the
            # files a single process writes. (The Trainer's own FSDP save gathers the whole model, or, with sharded
            # state dicts, writes no adapter at all.)
            model = self.accelerator.unwrap_model(self.model)
            full_params = gather_full_params(ivon)
            posterior = gathered_posterior(ivon, model, full_params)
            if self.args.should_save:
                self._save(output_dir, state_dict=gathered_adapter_state_dict(model, full_params))
        else:
            super().save_model(output_dir, _internal_call)
            # Only the saving process writes; under DDP the posterior is read from local state (identical on every
            # rank, no collective), so the other ranks need not take part.
            if ivon is not None and self.args.should_save:
                posterior = Posterior.from_optimizer(ivon, self.accelerator.unwrap_model(self.model))
        if ivon is not None and self.args.should_save:
            if self.ivon_prior_provenance is not None:
                posterior.config[PRIOR_RUN_KEY] = self.ivon_prior_provenance
            posterior.save(output_dir)


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
