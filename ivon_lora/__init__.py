"""ivon-lora: variational LoRA finetuning with IVON for the Hugging Face Trainer."""

from importlib import import_module
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from .choice import ChoiceTrainer
    from .generation import Generation, generate
    from .optim import IVON, ivon
    from .posterior import Posterior
    from .rundir import Run, load_run
    from .sft import IVONSFTConfig, IVONSFTTrainer
    from .trainer import IVONTrainer, IVONTrainerMixin, IVONTrainingArguments

# Imported on first use: `from ivon_lora import IVON` must not pay for importing transformers.
_LAZY = {
    "IVON": ".optim",
    "ivon": ".optim",
    "IVONTrainer": ".trainer",
    "IVONTrainerMixin": ".trainer",
    "IVONTrainingArguments": ".trainer",
    "ChoiceTrainer": ".choice",
    "IVONSFTConfig": ".sft",
    "IVONSFTTrainer": ".sft",
    "Generation": ".generation",
    "generate": ".generation",
    "Posterior": ".posterior",
    "Run": ".rundir",
    "load_run": ".rundir",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ivon_lora' has no attribute {name!r}")
