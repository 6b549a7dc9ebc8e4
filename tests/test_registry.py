"""The one registry type: registration order, duplicate refusal, did-you-mean lookup, the decorator form, and every
kind of named thing of the package held in one."""

import types

import pytest

from ivon_lora.registry import Registry, unknown_name


def test_a_registry_reads_as_a_mapping_in_registration_order():
    registry = Registry("colour", [("red", 1), ("green", 2)])
    registry.register("blue", 3)
    assert list(registry) == registry.names() == ["red", "green", "blue"]
    assert dict(registry.items()) == {"red": 1, "green": 2, "blue": 3} and len(registry) == 3
    assert "green" in registry and "grey" not in registry and registry["blue"] == registry.get("blue") == 3
    assert {**registry} == {"red": 1, "green": 2, "blue": 3}


def test_a_duplicate_name_is_refused_and_the_first_entry_kept():
    registry = Registry("colour", {"red": 1})
    with pytest.raises(ValueError, match="^A colour named 'red' is already registered$"):
        registry.register("red", 2)
    with pytest.raises(ValueError, match="already registered"):
        Registry("colour", [("red", 1), ("red", 2)])
    assert registry["red"] == 1


@pytest.mark.parametrize("name", ["", None, 3])
def test_a_name_must_be_a_non_empty_string(name):
    with pytest.raises(ValueError, match="needs a non-empty string name"):
        Registry("colour").register(name, 1)


def test_an_unknown_name_says_what_is_close_and_what_exists():
    registry = Registry("colour", {"red": 1, "green": 2})
    with pytest.raises(KeyError) as error:
        registry["gren"]
    assert error.value.args[0] == "Unknown colour 'gren'. Did you mean 'green'? Available: green, red"
    with pytest.raises(KeyError) as error:
        registry.get("xyz")
    assert error.value.args[0] == "Unknown colour 'xyz'. Available: green, red"
    assert registry.get("xyz", None) is None and registry.get("xyz", 0) == 0


def test_unknown_name_takes_a_listing_in_place_of_the_names():
    error = unknown_name("task", "mmlu_anatomi", ["mmlu_anatomy"], listing="mmlu_<subject>")
    assert error.args[0] == "Unknown task 'mmlu_anatomi'. Did you mean 'mmlu_anatomy'? Available: mmlu_<subject>"


def test_register_without_an_item_is_a_decorator():
    registry = Registry("format")

    @registry.register("upper")
    def upper(text):
        return text.upper()

    assert registry["upper"] is upper and upper("a") == "A"  # the decorated function is returned unchanged


def test_patched_adds_an_entry_for_a_with_block_only():
    registry = Registry("colour", {"red": 1})
    with registry.patched("blue", 3):
        assert registry["blue"] == 3
        with registry.patched("blue", 4):
            assert registry["blue"] == 4
        assert registry["blue"] == 3
    assert list(registry) == ["red"]
    with pytest.raises(RuntimeError), registry.patched("red", 9):
        raise RuntimeError
    assert registry["red"] == 1


def test_two_tasks_of_one_name_are_refused():
    from ivon_lora.tasks import get_task
    from ivon_lora.tasks.registry import task_registry

    arc = get_task("arc_easy")
    first, second = types.SimpleNamespace(TASKS=(arc,)), types.SimpleNamespace(TASKS=(get_task("boolq"), arc))
    with pytest.raises(ValueError, match="^A task named 'arc_easy' is already registered$"):
        task_registry((first, second))
    assert list(task_registry((second,))) == ["boolq", "arc_easy"]


def test_every_kind_of_named_thing_is_a_registry_with_its_lookup_error():
    from ivon_lora.builtin import BUILTIN_MODELS
    from ivon_lora.choice.prompts import PROMPT_FORMATS
    from ivon_lora.evaluation.metrics import METRICS, register_metric
    from ivon_lora.evaluation.selective import SELECTIVE_METRICS
    from ivon_lora.evaluation.uncertainty import CONFIDENCE_SCORES
    from ivon_lora.packaged import PACKAGED_MODELS
    from ivon_lora.sft.data import BUILTIN_SFT_DATASETS
    from ivon_lora.tasks import JUDGES, PROTOCOLS, TASKS, get_judge, get_protocol

    registries = {"task": TASKS, "protocol": PROTOCOLS, "judge": JUDGES, "prompt format": PROMPT_FORMATS,
                  "metric": METRICS, "selective metric": SELECTIVE_METRICS, "confidence score": CONFIDENCE_SCORES,
                  "built-in SFT dataset": BUILTIN_SFT_DATASETS, "built-in model": BUILTIN_MODELS,
                  "packaged model": PACKAGED_MODELS}  # fmt: skip
    for kind, registry in registries.items():
        assert isinstance(registry, Registry) and registry.kind == kind and len(registry) > 0
    with pytest.raises(KeyError, match="Did you mean 'blob'"):
        get_protocol("blb")
    with pytest.raises(KeyError, match="Did you mean 'token_f1'"):
        get_judge("token_f2")
    with pytest.raises(ValueError, match="A metric named 'nll' is already registered"):
        register_metric(METRICS["nll"])


def test_an_unknown_builtin_sft_dataset_is_a_task_data_error_with_did_you_mean():
    from ivon_lora.errors import TaskDataError
    from ivon_lora.sft.data import _builtin

    with pytest.raises(TaskDataError, match="Unknown built-in SFT dataset 'wordq'. Did you mean 'wordqa'"):
        _builtin("builtin:wordq")
    assert _builtin("some/hub-id") is None and _builtin("wordqa").name == "wordqa"
