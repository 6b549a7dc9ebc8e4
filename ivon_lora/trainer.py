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

With `optim` set to any transformers optimizer name (e.g. `adamw_torch`), the Trainer behaves as usual, so
the same code and recipes train the baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

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
    ivon_seed: int | None = field(default=None, metadata={"help": "Seed of IVON's noise generator; None: `seed`."})
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
        if self.optimizer is None:
            model = self.model if model is None else model
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError("The model has no trainable parameters for IVON (did LoRA wrapping fail?)")
            args = self.args
            if args.world_size > 1:
                # Per-rank noise with DDP-averaged gradients underestimates the Hessian by the world size, and
                # per-micro-batch recording under `no_sync` lets ranks drift (ivon-notes §2).
                raise NotImplementedError(
                    f"optim='ivon' with {args.world_size} data-parallel processes is not supported yet: IVON needs "
                    "its own gradient synchronisation. Train on one process, or use a transformers optimizer."
                )
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
            )
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._uses_ivon():
            return super().training_step(model, inputs, num_items_in_batch)
        ivon = self.ivon_optimizer
        params = [p for group in ivon.param_groups for p in group["params"]]
        # Each sample's loss is its own micro-batch mean: IVON averages the recorded samples in step().
        scaled_for_ga = self.loss_is_scaled_for_ga
        self.loss_is_scaled_for_ga = True
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        losses = []
        try:
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
        # Logged as the mean pre-clip norm of the step's per-sample gradients.
        norms = self._ivon_grad_norms
        mean_norm = torch.stack(norms).mean() if norms else torch.tensor(0.0)
        norms.clear()
        return mean_norm

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        ivon = self.ivon_optimizer
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
