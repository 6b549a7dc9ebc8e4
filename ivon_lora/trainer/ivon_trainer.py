"""IVON for the Hugging Face Trainer: `IVONTrainingArguments`, `IVONTrainerMixin` and `IVONTrainer`.

What changes compared with the Trainer's usual step (ivon-notes §1-§2):

* every micro-batch is one fresh posterior sample: its forward and backward run inside
  `IVON.sampled_params(train=True)`, which records that sample's gradient and clears `.grad`, so gradient
  accumulation averages per-sample gradients instead of summing them into one;
* the micro-batch loss is its own mean (not divided by the accumulation steps): IVON averages the recorded
  samples itself, which is what makes 4 x batch 2 equal 1 x batch 8;
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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import EvalPrediction, Trainer, TrainingArguments
from transformers.training_args import ParallelMode

from .optim import IVON
from .posterior import Posterior

IVON_OPTIM = "ivon"


@dataclass
class IVONTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus IVON's hyperparameters. `weight_decay` is IVON's prior precision."""

    optim: str = field(
        default=IVON_OPTIM,
        metadata={"help": "'ivon' (IVON over the trainable parameters) or a transformers optimizer, e.g. adamw_torch."},
    )
    learning_rate: float = field(
        default=0.03, metadata={"help": "Initial learning rate (IVON-LoRA uses 0.03; AdamW baselines ~5e-5)."}
    )
    ivon_ess: float | None = field(
        default=None,
        metadata={"help": "Effective sample size (lambda): sets the posterior width. Default: the train set size."},
    )
    ivon_hess_init: float = field(default=1e-3, metadata={"help": "Initial Hessian estimate h0."})
    ivon_beta1: float = field(default=0.9, metadata={"help": "Gradient momentum coefficient."})
    ivon_beta2: float = field(default=0.99999, metadata={"help": "Hessian estimate averaging coefficient."})
    ivon_clip_radius: float = field(
        default=1e-3, metadata={"help": "Element-wise clip of the preconditioned update (inf: no clipping)."}
    )
    ivon_rescale_lr: bool = field(default=False, metadata={"help": "Multiply the lr by (hess_init + weight_decay)."})
    ivon_mean_weight_decay: float | None = field(
        default=None,
        metadata={"help": "Weight decay on the mean update only; None: the prior precision `weight_decay`."},
    )
    ivon_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of IVON's noise generators (data-parallel ranks derive their own); None: `seed`."},
    )
    ivon_eval_mc_samples: int = field(
        default=0,
        metadata={"help": "Posterior samples averaged in each Trainer evaluation (eval_steps); 0: the mean only."},
    )
    train_mc_samples: int = field(
        default=1, metadata={"help": "Posterior samples (forward+backward passes) per micro-batch."}
    )

    def __post_init__(self):
        self.use_ivon = self.optim == IVON_OPTIM
        if self.use_ivon:
            if self.fp16:
                raise ValueError(
                    "fp16=True cannot be used with optim='ivon': the fp16 GradScaler's scaled gradients would enter "
                    "IVON's Hessian estimate. Use bf16=True (autocast) or full precision."
                )
            if self.ivon_eval_mc_samples < 0:
                raise ValueError(f"Invalid ivon_eval_mc_samples value: {self.ivon_eval_mc_samples} (must be >= 0)")
            if self.train_mc_samples < 1:
                raise ValueError(f"Invalid train_mc_samples value: {self.train_mc_samples} (must be >= 1)")
            # TrainingArguments only knows the transformers optimizers: validate the rest as for AdamW.
            self.optim = "adamw_torch"
            super().__post_init__()
            self.optim = IVON_OPTIM
        else:
            super().__post_init__()


def _unwrap_optimizer(optimizer):
    # Accelerate wraps the optimizer in `AcceleratedOptimizer`; the raw one is `.optimizer`.
    return getattr(optimizer, "optimizer", optimizer)


class IVONTrainerMixin:
    """Gives any `transformers.Trainer` subclass IVON: `class MyTrainer(IVONTrainerMixin, MyBaseTrainer)`.

    Needs `IVONTrainingArguments`; with `args.optim != 'ivon'` every hook falls through to the base class.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ivon_grad_norms: list[torch.Tensor] = []  # pre-clip norms of the current step's samples

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
            ess = args.ivon_ess if args.ivon_ess is not None else len(self.train_dataset)
            self.optimizer = IVON(
                params,
                lr=args.learning_rate,
                ess=ess,
                hess_init=args.ivon_hess_init,
                beta1=args.ivon_beta1,
                beta2=args.ivon_beta2,
                weight_decay=args.weight_decay,
                mean_weight_decay=args.ivon_mean_weight_decay,
                mc_samples=args.train_mc_samples,
                clip_radius=args.ivon_clip_radius,
                rescale_lr=args.ivon_rescale_lr,
                seed=args.ivon_seed if args.ivon_seed is not None else args.seed,
                # Per-rank noise, with g and eps*g averaged over the ranks in step() (ivon-notes §2, "Correct A").
                data_parallel=self._data_parallel_world_size() > 1,
            )
        self._check_ivon_synchronises(self.optimizer)
        return self.optimizer

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

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._uses_ivon():
            return super().training_step(model, inputs, num_items_in_batch)
        ivon = self.ivon_optimizer
        self._check_ivon_synchronises(ivon, model)
        params = [p for group in ivon.param_groups for p in group["params"]]
        # Each sample's loss is its own micro-batch mean: IVON averages the recorded samples in step().
        scaled_for_ga = self.loss_is_scaled_for_ga
        self.loss_is_scaled_for_ga = True
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        losses = []
        try:
            # IVON averages g and eps*g over the ranks in step(): DDP must not all-reduce the gradients, not even
            # on the last micro-batch, where the Trainer lets it (nested in the Trainer's own no_sync: no-op).
            with self.accelerator.no_sync(model):
                for _ in range(self.args.train_mc_samples):
                    with ivon.sampled_params(train=True):
                        losses.append(super().training_step(model, inputs, None))
                        self._ivon_grad_norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm).detach())
        finally:
            self.loss_is_scaled_for_ga = scaled_for_ga
        # The Trainer sums the returned losses over the accumulation steps for logging.
        return torch.stack(losses).mean() / self.current_gradient_accumulation_steps

    def _clip_grad_norm(self, model):
        if not self._uses_ivon():
            return super()._clip_grad_norm(model)
        return None  # each sample was clipped inside its sampling context

    def _get_grad_norm(self, model, grad_norm=None):
        if not self._uses_ivon():
            return super()._get_grad_norm(model, grad_norm)
        # Logged as the mean pre-clip norm of the step's per-sample gradients (of rank 0's samples, under DDP).
        norms = self._ivon_grad_norms
        mean_norm = torch.stack(norms).mean() if norms else torch.tensor(0.0)
        norms.clear()
        return mean_norm

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The usual evaluation (at the posterior mean), plus, with `ivon_eval_mc_samples` = S > 0 and
        `compute_metrics`, the metrics of the mean of S posterior-sample probability vectors as
        `{prefix}_sampled_*`.

        The samples come from a generator of their own, seeded by `seed`, so evaluating never moves the
        optimizer's noise stream (training and resume stay as without evaluation), and every rank of a
        data-parallel run draws the same sample for its shard.
        """
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        num_samples = getattr(self.args, "ivon_eval_mc_samples", 0)
        if self.ivon_optimizer is None or num_samples == 0 or self.compute_metrics is None:
            return metrics
        sampled = self._sampled_eval_metrics(eval_dataset, num_samples, ignore_keys, metric_key_prefix)
        self.log(sampled)
        return {**metrics, **sampled}

    def _sampled_eval_metrics(self, eval_dataset, num_samples, ignore_keys, metric_key_prefix) -> dict:
        model = self.accelerator.unwrap_model(self.model)
        # Bound once: mean and std stay cached on the adapter's device between samples.
        sampler = Posterior.from_optimizer(self.ivon_optimizer, model).sampler(
            model, generator=torch.Generator().manual_seed(self.args.seed)
        )
        dataloader = self.get_eval_dataloader(eval_dataset)
        compute_metrics, self.compute_metrics = self.compute_metrics, None  # only the averaged predictive is scored
        probs_sum = labels = None
        try:
            for _ in range(num_samples):
                with sampler.sample():
                    output = self.evaluation_loop(dataloader, description="Posterior sample", prediction_loss_only=False,
                                                  ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)  # fmt: skip
                logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
                probs = torch.softmax(torch.as_tensor(logits).double(), dim=-1)
                probs_sum = probs if probs_sum is None else probs_sum + probs
                labels = output.label_ids
        finally:
            self.compute_metrics = compute_metrics
        # Log-probabilities are logits whose softmax is the averaged predictive itself.
        prediction = EvalPrediction(predictions=(probs_sum / num_samples).log().numpy(), label_ids=labels)
        return {f"{metric_key_prefix}_sampled_{k}": v for k, v in compute_metrics(prediction).items()}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        ivon = self.ivon_optimizer
        # Only the saving process writes; the posterior is read from local state (identical on every rank, no
        # collective), so the other ranks need not take part.
        if ivon is not None and self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            Posterior.from_optimizer(ivon, model).save(output_dir or self.args.output_dir)


class IVONTrainer(IVONTrainerMixin, Trainer):
    """`transformers.Trainer` training with IVON (see `IVONTrainerMixin`); `args` defaults to IVON defaults."""

    def __init__(self, model=None, args: IVONTrainingArguments | None = None, **kwargs):
        if args is None:
            args = IVONTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, IVONTrainingArguments):
            raise TypeError(f"IVONTrainer needs IVONTrainingArguments, got {type(args).__name__}")
        super().__init__(model=model, args=args, **kwargs)
