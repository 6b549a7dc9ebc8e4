"""The training objectives, one `Objective` record each: `choice` (the K answer letters' cross-entropy on
multiple-choice tasks) and `sft` (causal-LM loss on instruction / chat data through TRL).

A record holds everything that differs between objectives: its recipe's data-arguments and training-arguments
classes, its Trainer, its train steps (data loading, the Trainer's inputs, the end-of-run scoring, metrics.json and
the model card's section; `ivon_lora.commands.training`), how its runs read prompts, and the `ivon-lora eval` kind
of its run dirs. Code that differs by objective asks the record; nothing else tests the objective's name.

The parts are named "module:attribute" and imported on first use (`Objective.part`): the recipe loader, which sits
below the trainer and the commands, holds the record without importing them, and an objective whose parts need an
extra (sft: TRL) costs nothing until it is used. A new objective is one `register_objective` call here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module

from .errors import RecipeError
from .registry import Registry


@dataclass(frozen=True)
class Objective:
    name: str
    help: str
    parts: dict[str, str] = field(repr=False)  # role -> "module:attribute" (see PARTS)
    eval_kind: str  # the `ivon-lora eval` kind (commands.runners) of its run dirs without --task
    dataset_is_task: bool  # the recipe's `dataset` names a registered task (checked when the recipe loads)
    required_keys: tuple[str, ...] = ()  # recipe keys without a default, besides model_name_or_path and output_dir
    extra: str | None = None  # the pip extra its parts need

    def part(self, role: str):
        """The objective's part `role` (one of PARTS), imported now."""
        if role not in self.parts:
            raise KeyError(f"Objective {self.name!r} has no part {role!r}; parts: {', '.join(self.parts)}")
        module, _, attribute = self.parts[role].partition(":")
        try:
            return getattr(import_module(module), attribute)
        except ImportError as error:
            if self.extra is None:
                raise
            raise RecipeError(f"objective: {self.name} needs {self.extra}: {error}") from None


# What every objective's record names.
PARTS = {
    "data_arguments": "the recipe's data keys (a dataclass)",
    "training_arguments": "the recipe's TrainingArguments subclass",
    "trainer": "the Trainer class it trains with",
    "steps": "its train steps: data, the Trainer's inputs, end-of-run scoring and report (commands.training)",
    "prompt_rendering": "recipe -> (whether its runs read prompts through the chat template, why)",
}

OBJECTIVES: Registry[Objective] = Registry("objective")


def register_objective(objective: Objective) -> Objective:
    missing = set(PARTS) - set(objective.parts)
    if missing:
        raise ValueError(f"Objective {objective.name!r} does not name its {', '.join(sorted(missing))}")
    return OBJECTIVES.register(objective.name, objective)


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise RecipeError(f"Recipe key 'objective': {name!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


register_objective(Objective(
    name="choice",
    help="the K answer letters' cross-entropy (multiple-choice tasks)",
    parts={"data_arguments": "ivon_lora.config:DataArguments",
           "training_arguments": "ivon_lora.trainer:IVONTrainingArguments",
           "trainer": "ivon_lora.choice:ChoiceTrainer",
           "steps": "ivon_lora.commands.training.choice:ChoiceSteps",
           "prompt_rendering": "ivon_lora.choice.prompts:prompt_rendering"},
    eval_kind="multiple_choice",
    dataset_is_task=True,
))  # fmt: skip
register_objective(Objective(
    name="sft",
    help="causal-LM loss on instruction/chat data through TRL (needs ivon-lora[sft]; keys: SFTDataArguments, "
         "SFTConfig)",
    parts={"data_arguments": "ivon_lora.config:SFTDataArguments",
           "training_arguments": "ivon_lora.sft:IVONSFTConfig",
           "trainer": "ivon_lora.sft:IVONSFTTrainer",
           "steps": "ivon_lora.commands.training.sft:SFTSteps",
           "prompt_rendering": "ivon_lora.sft.data:prompt_rendering"},
    eval_kind="sft",
    dataset_is_task=False,
    required_keys=("dataset",),
    extra="TRL (ivon-lora[sft])",
))  # fmt: skip
