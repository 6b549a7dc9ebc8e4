"""`ivon_lora.objectives`: one record per training objective, holding every part that differs between objectives;
no code outside the registry tests an objective's name."""

import ast
import dataclasses
import os

import pytest

from ivon_lora.objectives import OBJECTIVES, PARTS, Objective, get_objective, register_objective

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ivon_lora")


@pytest.mark.parametrize("name", ["choice", "sft"])
def test_every_part_of_an_objective_resolves_to_what_its_role_needs(name):
    from transformers import Trainer, TrainingArguments

    from ivon_lora.commands.runners import RUNNERS
    from ivon_lora.commands.training import TrainSteps

    objective = get_objective(name)
    assert set(objective.parts) == set(PARTS)
    assert dataclasses.is_dataclass(objective.part("data_arguments"))
    assert issubclass(objective.part("training_arguments"), TrainingArguments)
    assert issubclass(objective.part("trainer"), Trainer)
    assert issubclass(objective.part("steps"), TrainSteps)
    assert callable(objective.part("prompt_rendering"))
    assert objective.eval_kind in RUNNERS
    fields = {f.name for f in dataclasses.fields(objective.part("data_arguments"))}
    assert set(objective.required_keys) <= fields


def test_the_registry_refuses_duplicates_incomplete_records_and_unknown_names():
    record = dataclasses.replace(get_objective("choice"))
    with pytest.raises(ValueError, match="already registered"):
        register_objective(record)
    with pytest.raises(ValueError, match="does not name its steps"):
        register_objective(Objective("partial", "x", {k: v for k, v in record.parts.items() if k != "steps"},
                                     "multiple_choice", True))  # fmt: skip
    assert "partial" not in OBJECTIVES
    from ivon_lora.errors import RecipeError

    with pytest.raises(RecipeError, match="'choise' is not one of choice, sft"):
        get_objective("choise")


def test_no_module_outside_the_registry_compares_an_objective_to_a_name():
    """`x.objective == "sft"` (or != / in) anywhere but objectives.py would be a second place to add an objective."""
    found = []
    for directory, _, files in os.walk(PACKAGE):
        for file in files:
            path = os.path.join(directory, file)
            if not file.endswith(".py") or path.endswith("objectives.py"):
                continue
            for node in ast.walk(ast.parse(open(path).read())):
                if not isinstance(node, ast.Compare):
                    continue
                operands = [node.left, *node.comparators]
                names = [o for o in operands if isinstance(o, ast.Constant) and o.value in OBJECTIVES]
                objective = [o for o in operands if "objective" in ast.unparse(o)]
                if names and objective:
                    found.append(f"{os.path.relpath(path, PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
