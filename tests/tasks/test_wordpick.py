"""The generated 4-way word task: deterministic splits, one right word per question, noise in train only."""

from ivon_lora.tasks import load_split
from ivon_lora.tasks.wordfacts import CATEGORIES
from ivon_lora.tasks.wordpick import SPLIT_SIZES, TEMPLATES, wordpick_records


def _category(question: str) -> str:
    return next(name for name in CATEGORIES if any(t.format(category=name) == question for t in TEMPLATES))


def test_splits_are_deterministic_sized_and_have_exactly_one_member_of_the_category():
    for split, size in SPLIT_SIZES.items():
        records = wordpick_records(split)
        assert len(records) == size and records == wordpick_records(split)
        for record in records:
            members = CATEGORIES[_category(record["question"])][1]
            words = record["choices"]["text"]
            assert len(words) == 4 and sum(word in members for word in words) == 1
    clean, noisy = wordpick_records("train", label_noise=0.0), wordpick_records("train")
    assert [r["question"] for r in clean] == [r["question"] for r in noisy], "noise changes labels only"
    moved = sum(a["answerKey"] != b["answerKey"] for a, b in zip(clean, noisy))
    assert 0.08 < moved / len(clean) < 0.22
    assert wordpick_records("test") == wordpick_records("test", label_noise=0.0), "evaluation splits are clean"


def test_examples_have_the_letter_and_the_text_form():
    example = load_split("wordpick", "validation", limit=1).examples[0]
    record = wordpick_records("validation", num_examples=1)[0]
    assert example.answers == (" A", " B", " C", " D") and "Choices: A. " in example.prompt
    assert example.text_prompt == f"Question: {record['question']}\nAnswer:"
    assert example.texts == tuple(f" {word}" for word in record["choices"]["text"])
    assert record["choices"]["text"][example.gold] in CATEGORIES[_category(record["question"])][1]
