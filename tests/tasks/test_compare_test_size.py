"""Larger test splits for the generated tasks (`NAME:test_size=N`): the default split unchanged for existing recipes,
the first records of a larger split the default split's, the size recorded wherever the task is, and the tasks whose
splits are fixed refused by name."""

import os

import pytest

from ivon_lora.config import load_recipe
from ivon_lora.errors import RecipeError
from ivon_lora.tasks import get_task, load_records, load_split

DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "recipes", "demo.yaml"
)
SIZABLE = {"synthetic": 1000, "wordfacts": 300, "wordfacts_clean": 300, "antonyms": 300, "wordpick": 300}


@pytest.mark.parametrize("name, default", sorted(SIZABLE.items()))
def test_a_larger_test_split_extends_the_default_one(name, default):
    task = get_task(name)
    assert task.test_size is None and "test_size" not in task.as_dict()
    plain = load_records(task, "test")
    assert len(plain) == default
    sized = get_task(f"{name}:test_size={default + 200}")
    assert sized.name == f"{name}:test_size={default + 200}" and sized.as_dict()["test_size"] == default + 200
    larger = load_records(sized, "test")
    assert len(larger) == default + 200
    assert larger[:default] == plain  # the same questions first: results on the default split stay comparable
    assert len({record["id"] for record in larger}) == len(larger)
    for split in ("train", "validation"):  # the other splits do not move
        assert load_records(sized, split) == load_records(task, split)


def test_a_smaller_test_split_is_the_default_ones_first_records():
    assert load_records(get_task("wordfacts:test_size=50"), "test") == load_records(get_task("wordfacts"), "test")[:50]


def test_the_size_is_recorded_in_the_data_record():
    loaded = load_split("wordfacts_clean:test_size=1000", "test")
    record = loaded.as_dict()
    assert record["task"] == "wordfacts_clean:test_size=1000" and record["num_rows"] == 1000
    assert len(loaded.examples) == 1000


@pytest.mark.parametrize(
    "name, message",
    [
        ("wordqa:test_size=100", "Task 'wordqa' takes no test_size"),  # split by word: fixed sizes
        ("wordfacts_antonyms:test_size=100", "Task 'wordfacts_antonyms' takes no test_size"),
        ("arc_easy:test_size=100", "Task 'arc_easy' takes no test_size"),  # a Hub dataset
        ("wordfacts:test_size=0", r"Invalid test_size value: .* \(must be a positive integer\)"),
        ("wordfacts:test_size=1e3", r"Invalid test_size value: .* \(must be a positive integer\)"),
        ("wordfacts:test_size=100:test_size=200", "takes no test_size"),
        ("wordfact:test_size=100", "Did you mean 'wordfacts'"),
    ],
)
def test_a_test_size_is_refused_where_the_splits_are_fixed_or_the_size_is_no_count(name, message):
    with pytest.raises(KeyError, match=message):
        get_task(name)


def test_a_recipe_takes_a_sized_task_and_names_its_key_when_refused(tmp_path):
    recipe = load_recipe(DEMO, [f"output_dir={tmp_path / 'a'}", "dataset=wordfacts:test_size=1000"])
    assert recipe.data.dataset == "wordfacts:test_size=1000"
    with pytest.raises(RecipeError, match="Recipe key 'dataset': .*Task 'wordqa' takes no test_size"):
        load_recipe(DEMO, [f"output_dir={tmp_path / 'b'}", "dataset=wordqa:test_size=10"])
