"""The parts of each training objective (`ivon_lora.objectives`) that live at or below the recipe loader: the
recipe's data and training arguments classes, the Trainer, and how its runs read prompts. Provided to the records
here, with real imports, because the records sit in a leaf below config and may not import upward; the train steps,
which live with the commands, are provided by `ivon_lora.commands.training`.

The imports of the trainer, the choice and the SFT packages are inside the providers: a recipe of one objective
never imports another's packages (sft needs TRL), and loading a saved run imports no TrainingArguments.
"""

from __future__ import annotations

from ..objectives import get_objective
from .arguments import DataArguments, SFTDataArguments


def _choice_training_arguments():
    from ..trainer import IVONTrainingArguments

    return IVONTrainingArguments


def _choice_trainer():
    from ..choice import ChoiceTrainer

    return ChoiceTrainer


def _choice_prompt_rendering():
    from ..choice.prompts import prompt_rendering

    return prompt_rendering


def _sft_training_arguments():
    from ..sft import IVONSFTConfig

    return IVONSFTConfig


def _sft_trainer():
    from ..sft import IVONSFTTrainer

    return IVONSFTTrainer


def _sft_prompt_rendering():
    from ..sft.data import prompt_rendering

    return prompt_rendering


for _name, _parts in {
    "choice": {"data_arguments": lambda: DataArguments, "training_arguments": _choice_training_arguments,
               "trainer": _choice_trainer, "prompt_rendering": _choice_prompt_rendering},
    "sft": {"data_arguments": lambda: SFTDataArguments, "training_arguments": _sft_training_arguments,
            "trainer": _sft_trainer, "prompt_rendering": _sft_prompt_rendering},
}.items():  # fmt: skip
    for _role, _provider in _parts.items():
        get_objective(_name).provide(_role, _provider)
