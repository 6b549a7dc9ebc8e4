"""The training objectives, one `Objective` record each: `choice` (the K answer letters' cross-entropy on
multiple-choice tasks) and `sft` (causal-LM loss on instruction / chat data through TRL).

A record holds everything that differs between objectives: its name and help, the `ivon-lora eval` kind of its run
dirs, what its recipe requires, and its parts (PARTS: the recipe's data-arguments and training-arguments classes,
its Trainer, how its runs read prompts, its train steps). Code that differs by objective asks the record; nothing
else tests the objective's name.

This module is a leaf: the records are imported by the recipe loader (`ivon_lora.config`), which sits below the
trainer and the commands. So a record does not import its parts; each part is provided to it, through real imports,
by the layer it lives in: `ivon_lora.config.objective_parts` provides what the recipe is parsed and trained with
(its dataclasses, the Trainer, the prompt rendering: modules at or below config), and `ivon_lora.commands.training`
provides the train steps (they evaluate and write reports, so they live with the commands). Each provider imports
this module, never the reverse: data flows one way, and the import test sees every edge. A provider is a function
that returns the part, so that an objective whose parts need an extra (sft: TRL) costs nothing until it is used.

A new objective is one `register_objective` call here and its parts in those two providers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import RecipeError
from .registry import Registry

# What every objective's record holds, and which layer provides it.
PARTS = {
    "data_arguments": "the recipe's data keys (a dataclass; ivon_lora.config.objective_parts)",
    "training_arguments": "the recipe's TrainingArguments subclass (ivon_lora.config.objective_parts)",
    "trainer": "the Trainer class it trains with (ivon_lora.config.objective_parts)",
    "prompt_rendering": "recipe -> (whether its runs read prompts through the chat template, why) "
    "(ivon_lora.config.objective_parts)",
    "steps": "its train steps: data, the Trainer's inputs, end-of-run scoring and report (ivon_lora.commands.training)",
}


@dataclass(frozen=True)
class Objective:
    name: str
    help: str
    eval_kind: str  # the `ivon-lora eval` kind (evaluation.kinds) of its run dirs without --task
    dataset_is_task: bool  # the recipe's `dataset` names a registered task (checked when the recipe loads)
    required_keys: tuple[str, ...] = ()  # recipe keys without a default, besides model_name_or_path and output_dir
    extra: str | None = None  # the pip extra its parts need
    # role -> a function returning the part, filled by the providers (see the module doc).
    providers: dict[str, Callable[[], object]] = field(default_factory=dict, repr=False, compare=False)

    def provide(self, role: str, provider: Callable[[], object]) -> None:
        """Give the record its part `role` (one of PARTS): `provider()` returns it. Called once per role, by the
        layer the part lives in."""
        if role not in PARTS:
            raise ValueError(f"Objective {self.name!r}: {role!r} is not a part; parts: {', '.join(PARTS)}")
        if role in self.providers:
            raise ValueError(f"Objective {self.name!r}: its {role} is already provided")
        self.providers[role] = provider

    def part(self, role: str):
        """The objective's part `role` (one of PARTS), imported now."""
        if role not in PARTS:
            raise KeyError(f"Objective {self.name!r} has no part {role!r}; parts: {', '.join(PARTS)}")
        if role not in self.providers:
            raise LookupError(f"Objective {self.name!r}: no {role} provided yet ({PARTS[role]}): import the module "
                              "named there first")  # fmt: skip
        try:
            return self.providers[role]()
        except ImportError as error:
            if self.extra is None:
                raise
            raise RecipeError(f"objective: {self.name} needs {self.extra}: {error}") from None


OBJECTIVES: Registry[Objective] = Registry("objective")


def register_objective(objective: Objective) -> Objective:
    return OBJECTIVES.register(objective.name, objective)


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise RecipeError(f"Recipe key 'objective': {name!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


register_objective(Objective(
    name="choice",
    help="the K answer letters' cross-entropy (multiple-choice tasks)",
    eval_kind="multiple_choice",
    dataset_is_task=True,
))  # fmt: skip
register_objective(Objective(
    name="sft",
    help="causal-LM loss on instruction/chat data through TRL (needs ivon-lora[sft]; keys: SFTDataArguments, "
         "SFTConfig)",
    eval_kind="sft",
    dataset_is_task=False,
    required_keys=("dataset",),
    extra="TRL (ivon-lora[sft])",
))  # fmt: skip
