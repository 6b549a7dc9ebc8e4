"""`ivon_lora.objectives`: one record per training objective, holding every part that differs between objectives,
each provided by the layer it lives in (config, commands) through real imports; no code outside the registry tests an
objective's name."""

import ast
import dataclasses
import os

import pytest

from ivon_lora.objectives import OBJECTIVES, PARTS, Objective, get_objective, register_objective

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ivon_lora")


@pytest.mark.parametrize("name", ["choice", "sft"])
def test_every_part_of_an_objective_resolves_to_what_its_role_needs(name):
    from transformers import Trainer, TrainingArguments

    import ivon_lora.commands  # noqa: F401 (provides the train steps)
    import ivon_lora.config  # noqa: F401 (provides the recipe's parts)
    from ivon_lora.commands.training.steps import TrainSteps
    from ivon_lora.evaluation.kinds import EVAL_KINDS

    objective = get_objective(name)
    assert set(objective.providers) == set(PARTS)
    assert dataclasses.is_dataclass(objective.part("data_arguments"))
    assert issubclass(objective.part("training_arguments"), TrainingArguments)
    assert issubclass(objective.part("trainer"), Trainer)
    assert issubclass(objective.part("steps"), TrainSteps)
    assert callable(objective.part("prompt_rendering"))
    assert objective.eval_kind in EVAL_KINDS
    fields = {f.name for f in dataclasses.fields(objective.part("data_arguments"))}
    assert set(objective.required_keys) <= fields


def test_the_registry_refuses_duplicates_and_unknown_names_and_a_record_its_parts_twice_or_unknown():
    record = dataclasses.replace(get_objective("choice"), providers={})
    with pytest.raises(ValueError, match="already registered"):
        register_objective(record)
    with pytest.raises(ValueError, match="its steps is already provided"):
        get_objective("choice").provide("steps", lambda: None)
    with pytest.raises(ValueError, match="'loss' is not a part; parts: data_arguments"):
        record.provide("loss", lambda: None)
    with pytest.raises(LookupError, match=r"no steps provided yet \(.*ivon_lora.commands.training\)"):
        record.part("steps")
    partial = Objective("partial", "x", "multiple_choice", True)
    assert partial.providers == {} and "partial" not in OBJECTIVES
    from ivon_lora.errors import RecipeError

    with pytest.raises(RecipeError, match="'choise' is not one of choice, sft"):
        get_objective("choise")


def test_a_missing_extra_is_one_recipe_error_naming_it():
    from ivon_lora.errors import RecipeError

    record = Objective("needs_extra", "x", "sft", False, extra="TRL (ivon-lora[sft])")

    def provider():
        raise ModuleNotFoundError("No module named 'trl'")

    record.provide("trainer", provider)
    with pytest.raises(RecipeError, match=r"objective: needs_extra needs TRL \(ivon-lora\[sft\]\): No module named"):
        record.part("trainer")


def test_the_parts_come_from_real_imports_of_the_layers_that_provide_them():
    """No "module:attribute" strings: each provider imports its parts, where the import test sees the edge, and
    imports the objectives leaf, never the reverse."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_imports import _graph

    edges, _ = _graph()
    assert edges["ivon_lora.objectives"] == {"ivon_lora.errors", "ivon_lora.registry"}
    assert {"ivon_lora.objectives", "ivon_lora.trainer", "ivon_lora.choice", "ivon_lora.choice.prompts",
            "ivon_lora.sft", "ivon_lora.sft.data"} <= edges["ivon_lora.config.objective_parts"]  # fmt: skip
    assert {"ivon_lora.objectives", "ivon_lora.commands.training.choice", "ivon_lora.commands.training.sft"} <= edges[
        "ivon_lora.commands.training"
    ]


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
