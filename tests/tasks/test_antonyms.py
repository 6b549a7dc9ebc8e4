"""The antonyms task (the merging study's second task) and the union task made of it and wordfacts."""

from ivon_lora.tasks import get_task, load_examples
from ivon_lora.tasks.antonyms import SPLIT_SIZES, TRIPLES, antonyms_records, wordfacts_antonyms_records
from ivon_lora.tasks.wordfacts import wordfacts_records


def test_antonyms_is_deterministic_balanced_and_true_exactly_for_opposites():
    assert antonyms_records("train") == antonyms_records("train")
    assert {split: len(antonyms_records(split)) for split in SPLIT_SIZES} == {
        "train": 256,
        "validation": 200,
        "test": 300,
    }
    opposites = {frozenset((w, a)) for w, a, _ in TRIPLES}
    synonyms = {frozenset((w, s)) for w, _, s in TRIPLES}
    for split in SPLIT_SIZES:
        records = antonyms_records(split, 2000)
        for record in records:
            words = record["question"].replace(" opposites", "").split()
            pair = frozenset(w for w in words if any(w in triple for triple in TRIPLES))
            # The false statements pair a near-synonym, never an unrelated word.
            assert pair in (opposites if record["answer"] else synonyms), record
        assert 0.45 < sum(r["answer"] for r in records) / 2000 < 0.55
    # Splits are different draws (shared vocabulary, as in wordfacts).
    assert antonyms_records("validation", 50) != antonyms_records("test", 50)


def test_antonyms_uses_wordfacts_prompt_and_answers():
    example = load_examples("antonyms", "validation", limit=1)[0]
    assert example.id == "antonyms-validation-0" and example.answers == (" False", " True")
    assert example.prompt.startswith("True or False: ") and example.prompt.endswith("? Answer:")
    assert get_task("antonyms").family == get_task("wordfacts").family == "boolq"


def test_union_task_holds_both_tasks_records_shuffled():
    for split in SPLIT_SIZES:
        union = wordfacts_antonyms_records(split)
        expected = wordfacts_records(split) + antonyms_records(split)
        assert sorted(r["id"] for r in union) == sorted(r["id"] for r in expected)
        assert union != expected and union == wordfacts_antonyms_records(split)
    assert len(load_examples("wordfacts_antonyms", "train")) == 512
