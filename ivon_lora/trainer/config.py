"""`IVONTrainingArguments`: `TrainingArguments` plus IVON's hyperparameters (each field with its help)."""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from ..optim.ivon import _check_hyperparameters
from ..validation import NON_NEGATIVE, check_fields
from .parallelism import refused_training_arguments

IVON_OPTIM = "ivon"
# IVON's learning rate when `learning_rate` is left unset (IVON-LoRA's); any other optimizer gets its base config's
# default (TrainingArguments' 5e-5, TRL SFTConfig's 2e-5).
IVON_DEFAULT_LEARNING_RATE = 0.03
# The widest initial posterior std the default ess allows: 1/sqrt(ess * hess_init) of the IVON-LoRA paper (ess 1e6,
# hess_init 1e-3). The train set size alone (the Bayesian choice) gives 1.4 for 500 examples at hess_init 1e-3:
# samples that wide replace the pretrained function with noise, the gradients explode and the mean never learns.
DEFAULT_INITIAL_STD = 0.032
# IVON's argument names -> the fields of IVONTrainingArguments that set them (errors name the field).
IVON_ARGUMENT_FIELDS = {"lr": "learning_rate", "ess": "ivon_ess", "hess_init": "ivon_hess_init", "beta1": "ivon_beta1",
                        "beta2": "ivon_beta2", "weight_decay": "weight_decay", "clip_radius": "ivon_clip_radius",
                        "mean_weight_decay": "ivon_mean_weight_decay", "mc_samples": "ivon_mc_samples",
                        "rescale_lr": "ivon_rescale_lr", "seed": "ivon_seed"}  # fmt: skip
# Former field names -> the new ones (every IVON field is `ivon_` + IVON's argument name; "samples" counts posterior
# samples). The recipe reads them too (ivon_lora.config.RENAMED_RECIPE_KEYS; a test holds the two equal).
RENAMED_TRAINING_FIELDS = {"train_mc_samples": "ivon_mc_samples", "ivon_eval_mc_samples": "ivon_eval_samples"}
# A user-chosen ess whose initial std is above this gets a warning, with the reason.
WIDE_INITIAL_STD = 0.1


def default_ess(num_train_examples: int, hess_init: float, weight_decay: float) -> float:
    """The train set size, raised so the initial posterior std 1/sqrt(ess*(hess_init+wd)) is <= DEFAULT_INITIAL_STD."""
    return max(float(num_train_examples), 1.0 / (DEFAULT_INITIAL_STD**2 * (hess_init + weight_decay)))


@dataclass
class IVONTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus IVON's hyperparameters. `weight_decay` is IVON's prior precision.

    Every other `transformers.TrainingArguments` field keeps its meaning. Each field's help (the recipe reference
    lists them) says more; the IVON optimizer's own arguments are documented on `ivon_lora.IVON`.

    Args:
        optim: `'ivon'` (IVON over the trainable parameters) or any transformers optimizer name, e.g.
            `'adamw_torch'`, which trains the usual baseline with the same code.
        learning_rate: unset, 0.03 (IVON-LoRA's) with `optim='ivon'`, else the base config's default. IVON's
            learning rate is not AdamW's: scale it to the run length (the "Settings for your run length" guide).
        ivon_ess: the effective sample size, which sets the posterior's width `1/sqrt(ess * (h + weight_decay))`;
            None: the train set size, raised so that the initial std is at most 0.032.
        ivon_hess_init: the initial Hessian estimate h0.
        ivon_beta1: the gradient momentum coefficient.
        ivon_beta2: the Hessian estimate's averaging coefficient, below 1.
        ivon_clip_radius: the element-wise clip of the preconditioned update (inf: none).
        ivon_rescale_lr: multiply the learning rate by `hess_init + weight_decay`.
        ivon_mean_weight_decay: a weight decay on the mean update only; None: `weight_decay`.
        ivon_seed: the seed of IVON's noise generators; None: `seed`.
        ivon_mc_samples: posterior samples (forward and backward passes) per micro-batch, IVON's `mc_samples`
            (formerly `train_mc_samples`).
        ivon_eval_samples: S, the posterior samples of each Trainer evaluation's sampled predictive (logged as
            `eval_sampled_*`); 0: the posterior mean only (formerly `ivon_eval_mc_samples`).
        ivon_loo_eval: also log the leave-one-out NLL estimated from the train set at each evaluation.

    Raises:
        ValueError: a hyperparameter out of its range (the message names the field and echoes the value), fp16
            with IVON, `ivon_loo_eval` without IVON, or a field given under both its former and its new name.

    A former name (`RENAMED_TRAINING_FIELDS`) still works, with a FutureWarning naming the new one, as TRL's renamed
    config fields do.
    """

    optim: str = field(
        default=IVON_OPTIM,
        metadata={"help": "'ivon' (IVON over the trainable parameters) or a transformers optimizer, e.g. adamw_torch."},
    )
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": f"Initial learning rate. Unset: {IVON_DEFAULT_LEARNING_RATE} (IVON-LoRA's) with "
            "optim='ivon', else the base config's default (TrainingArguments' 5e-5, TRL SFTConfig's "
            "2e-5).",
            "bounds": NON_NEGATIVE,
        },
    )
    ivon_ess: float | None = field(
        default=None,
        metadata={
            "help": "Effective sample size (lambda): sets the posterior width 1/sqrt(ess*(h+weight_decay)). "
            "Default: the train set size, raised so that the initial std is at most "
            f"{DEFAULT_INITIAL_STD} (the IVON-LoRA paper's width)."
        },
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
    ivon_mc_samples: int = field(
        default=1, metadata={"help": "Posterior samples (forward+backward passes) per micro-batch: IVON's mc_samples."}
    )
    ivon_eval_samples: int = field(
        default=0,
        metadata={
            "help": "Posterior samples averaged in each Trainer evaluation (eval_steps); 0: the mean only.",
            "bounds": NON_NEGATIVE,
        },
    )
    ivon_loo_eval: bool = field(
        default=False,
        metadata={
            "help": "At each evaluation also log {prefix}_loo_nll: the leave-one-out NLL estimated from the "
            "train set and the posterior (Memory-Perturbation Equation, exact variances; objectives "
            "with a loo_nll hook, e.g. multiple choice). Costs K backward passes per train batch."
        },
    )
    # Former names, kept for the callers that still pass them (see RENAMED_TRAINING_FIELDS); None: not given.
    train_mc_samples: int | None = field(default=None, metadata={"help": "Deprecated: renamed ivon_mc_samples."})
    ivon_eval_mc_samples: int | None = field(default=None, metadata={"help": "Deprecated: renamed ivon_eval_samples."})

    def __post_init__(self):
        self._take_renamed_fields()
        self.use_ivon = self.optim == IVON_OPTIM
        if self.learning_rate is None:
            self.learning_rate = IVON_DEFAULT_LEARNING_RATE if self.use_ivon else self._base_default_learning_rate()
        check_fields(self, names=_OWN_FIELDS)  # the bounds in these fields' metadata (NaN is refused too)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"Invalid max_steps value: {self.max_steps} (must be > 0, or -1 for num_train_epochs)")
        if self.ivon_loo_eval and not self.use_ivon:
            raise ValueError(f"ivon_loo_eval needs optim='ivon' (the estimate needs a posterior; optim={self.optim!r} "
                             "has none)")  # fmt: skip
        if not self.use_ivon:
            super().__post_init__()
            return
        # IVON's own fields first, by IVON's rules, named as the config names them.
        if self.fp16:
            raise ValueError(
                "fp16=True cannot be used with optim='ivon': the fp16 GradScaler's scaled gradients would enter "
                "IVON's Hessian estimate. Use bf16=True (autocast) or full precision."
            )
        values = {argument: getattr(self, name) for argument, name in IVON_ARGUMENT_FIELDS.items()}
        values["ess"] = 1.0 if self.ivon_ess is None else self.ivon_ess  # None: derived from the train set, later
        values["seed"] = self.seed if self.ivon_seed is None else self.ivon_seed
        _check_hyperparameters(**values, names=IVON_ARGUMENT_FIELDS)
        if (refusal := refused_training_arguments(self)) is not None:  # DeepSpeed, FSDP1, offload: parallelism.py
            raise ValueError(f"optim='ivon' does not support {refusal}")
        # Then TrainingArguments' own fields (schedule, batches, precision, ...).
        with _optim_known_to_transformers(self):
            super().__post_init__()

    def _take_renamed_fields(self) -> None:
        """A value given under a former name moves to the new field, with a FutureWarning naming it; the former field
        is cleared, so that `dataclasses.replace` and a reloaded `to_dict()` do not move it again."""
        for old, new in RENAMED_TRAINING_FIELDS.items():
            value = getattr(self, old)
            if value is None:
                continue
            if getattr(self, new) != self.__dataclass_fields__[new].default:
                raise ValueError(f"{old} and {new} given: {old} is the former name of {new}; keep only {new}")
            warnings.warn(f"{old} is deprecated: rename it {new} (same meaning)", FutureWarning, stacklevel=4)
            setattr(self, new, value)
            setattr(self, old, None)

    @classmethod
    def _base_default_learning_rate(cls) -> float:
        """`learning_rate`'s default in the first base config that is not IVON's (TrainingArguments, SFTConfig...)."""
        for base in cls.__mro__:
            if issubclass(base, IVONTrainingArguments) or not dataclasses.is_dataclass(base):
                continue
            learning_rate = base.__dataclass_fields__.get("learning_rate")
            if learning_rate is not None and learning_rate.default is not dataclasses.MISSING:
                return learning_rate.default
        return TrainingArguments.learning_rate


# The fields IVONTrainingArguments declares (its bounds are checked from their metadata); TrainingArguments' own are
# checked by TrainingArguments, and IVON's hyperparameters by IVON's own check, which names these fields.
_OWN_FIELDS = frozenset(IVONTrainingArguments.__annotations__)


@contextmanager
def _optim_known_to_transformers(args: IVONTrainingArguments):
    """While TrainingArguments validates its fields, `optim` holds a name of its closed `OptimizerNames` enum
    (which has no 'ivon' and no way to register one); 'ivon' is back afterwards, also when validation raises.
    Nothing in that validation depends on which optimizer is named: it only converts the name to the enum."""
    args.optim = OptimizerNames.ADAMW_TORCH
    try:
        yield
    finally:
        args.optim = IVON_OPTIM
