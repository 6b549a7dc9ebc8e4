"""IVON for the Hugging Face Trainer, for any objective: the config, the mixin and the ready Trainer."""

from .config import IVON_OPTIM, IVONTrainingArguments
from .ivon_trainer import IVONTrainer, IVONTrainerMixin

__all__ = ["IVON_OPTIM", "IVONTrainer", "IVONTrainerMixin", "IVONTrainingArguments"]
