"""ivon-lora: variational LoRA finetuning with IVON for the Hugging Face Trainer."""

from importlib import import_module

__version__ = "0.1.0"

# Imported on first use: `from ivon_lora import IVON` must not pay for importing transformers.
_LAZY = {
    "IVON": ".optim",
    "ivon": ".optim",
    "IVONTrainer": ".trainer",
    "IVONTrainerMixin": ".trainer",
    "IVONTrainingArguments": ".trainer",
    "Posterior": ".posterior",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ivon_lora' has no attribute {name!r}")
