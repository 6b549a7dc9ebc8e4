"""Task registry: ARC-schema records (letters, digits, 3-5 choices), local files and clear record errors."""

import json

import pytest

from ivon_lora.tasks import RecordError, arc_example, get_task, load_examples
from ivon_lora.tasks.synthetic import synthetic_records


def test_arc_numeric_labels_and_five_choices():
    example = arc_example(
        {"id": "q1", "question": "Which?", "choices": {"text": list("vwxyz"), "label": ["1", "2", "3", "4", "5"]},
         "answerKey": "4"}
    )  # fmt: skip
    assert example.gold == 3
    assert example.answers == (" A", " B", " C", " D", " E")
    assert example.prompt.endswith("Choices: A. v B. w C. x D. y E. z Answer:")


def test_synthetic_task_is_deterministic_and_noisy():
    first, second = synthetic_records("train", 200), synthetic_records("train", 200)
    assert first == second
    assert synthetic_records("validation", 5) != synthetic_records("test", 5)
    clean = synthetic_records("train", 2000, label_noise=0.0)
    noisy = synthetic_records("train", 2000)
    flipped = sum(a["answerKey"] != b["answerKey"] for a, b in zip(clean, noisy)) / 2000
    assert 0.1 < flipped < 0.2


def test_local_jsonl_in_the_hub_schema(tmp_path):
    path = tmp_path / "arc.jsonl"
    rows = synthetic_records("validation", 3)
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples = load_examples("arc_challenge", "validation", str(path))
    assert [e.id for e in examples] == [r["id"] for r in rows]


def test_a_bad_record_names_task_split_and_row(tmp_path):
    rows = synthetic_records("validation", 3)
    rows[2]["answerKey"] = "Z"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(RecordError, match=r"Task 'arc_easy', split 'validation' \(.*bad.jsonl\), row 2: answerKey 'Z'"):
        load_examples("arc_easy", "validation", str(path))


def test_unknown_task_suggests_the_closest():
    with pytest.raises(KeyError, match="Did you mean 'arc_easy'"):
        get_task("arc_eazy")
