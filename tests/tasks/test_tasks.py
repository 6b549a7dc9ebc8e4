"""Task registry: every suite's schema -> prompt, answers, gold; protocol filters and answer sets; local files; the
Hub call; record errors that name the task, split and row."""

import json

import pytest

from ivon_lora.choice import answer_token_ids
from ivon_lora.tasks import (
    MC_TEMPLATE,
    MULTIPLE_CHOICE,
    PROTOCOLS,
    TASKS,
    Protocol,
    RecordError,
    TaskDataError,
    arc_example,
    get_protocol,
    get_task,
    load_examples,
    load_split,
    task_names,
)
from ivon_lora.tasks.boolq import boolq_example
from ivon_lora.tasks.synthetic import synthetic_records

MC = "Select one of the choices that answers the following question: "


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return str(path)


def arc_row(id, question, texts, labels, key):
    return {"id": id, "question": question, "choices": {"text": texts, "label": labels}, "answerKey": key}


# ARC as the Hub has it: letter and digit labels, 3, 4 and 5 choices.
ARC_ROWS = [
    arc_row("Q-4A", "Which gas do plants take in?", ["oxygen", "carbon dioxide", "helium", "neon"], list("ABCD"), "B"),
    arc_row("Q-4N", "What melts ice?", ["heat", "cold", "dark", "sound"], ["1", "2", "3", "4"], "1"),
    arc_row("Q-3A", "Which is a planet?", ["Mars", "Moon", "Sun"], list("ABC"), "A"),
    arc_row("Q-5N", "Which is a mammal?", ["shark", "whale", "trout", "eel", "cod"], ["1", "2", "3", "4", "5"], "2"),
    arc_row("Q-5A", "Which is a metal?", ["wood", "glass", "stone", "wool", "iron"], list("ABCDE"), "E"),
]

# One case per task: rows in the Hub's schema and what the first row must become; ids None = f"{split}-{row}".
CASES = {
    "arc_challenge": (
        ARC_ROWS[:2],
        MC + "Which gas do plants take in? Choices: A. oxygen B. carbon dioxide C. helium D. neon Answer:",
        (" A", " B", " C", " D"), [1, 0], ["Q-4A", "Q-4N"],
    ),
    "openbookqa": (
        [{"id": "7-980", "question_stem": "The sun is responsible for", "answerKey": "B",
          "choices": {"text": ["puppies", "plants growing", "rain", "snow"], "label": list("ABCD")},
          "fact1": "the sun makes plants grow"}],
        MC + "The sun is responsible for Choices: A. puppies B. plants growing C. rain D. snow Answer:",
        (" A", " B", " C", " D"), [1], ["7-980"],
    ),
    "winogrande_s": (
        [{"sentence": "Sarah lent Maria a book because _ was kind.", "option1": "Sarah", "option2": "Maria",
          "answer": "1"},
         {"sentence": "Sarah lent Maria a book because _ had none.", "option1": "Sarah", "option2": "Maria",
          "answer": "2"}],
        MC + "Sarah lent Maria a book because _ was kind. Choices: 1. Sarah 2. Maria Answer:",
        (" 1", " 2"), [0, 1], None,
    ),
    "boolq": (
        [{"question": "is the sky blue", "answer": True, "passage": "The sky looks blue."},
         {"question": "is grass red", "answer": False, "passage": "Grass is green."}],
        "Answer the question with only True or False: is the sky blue Context: The sky looks blue.",
        (" False", " True"), [1, 0], None,
    ),
    "piqa": (
        [{"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "paint the lid.", "label": 0},
         {"goal": "To dry hair,", "sol1": "use water.", "sol2": "use a towel.", "label": 1}],
        MC + "To open a jar, Choices: A. twist the lid. B. paint the lid. Answer:",
        (" A", " B"), [0, 1], None,
    ),
    "siqa": (
        [{"context": "Tracy fed the cat.", "question": "Why did Tracy do this?", "answerA": "to be kind",
          "answerB": "to sleep", "answerC": "to run", "label": "1"},
         {"context": "Jo won.", "question": "How does Jo feel?", "answerA": "sad", "answerB": "bored",
          "answerC": "happy", "label": "3"}],
        MC + "Tracy fed the cat. Why did Tracy do this? Choices: A. to be kind B. to sleep C. to run Answer:",
        (" A", " B", " C"), [0, 2], None,
    ),
    "hellaswag": (
        [{"ind": 4, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a pan", "ctx_b": "",
          "ctx": "[header] How to clean a pan [title] Rinse it.", "endings": ["Dry it.", "Eat it.", "Sing.", "Run."],
          "source_id": "wikihow~1", "split": "val", "split_type": "indomain", "label": "0"},
         {"ind": 9, "activity_label": "Skiing", "ctx_a": "A man skis.", "ctx_b": "he", "ctx": "A man skis. he",
          "endings": ["falls.", "flies.", "swims.", "sleeps."], "source_id": "v_1", "split": "val",
          "split_type": "zeroshot", "label": "3"}],
        MC + "Home and Garden: How to clean a pan. Rinse it. Choices: A. Dry it. B. Eat it. C. Sing. D. Run. Answer:",
        (" A", " B", " C", " D"), [0, 3], None,
    ),
    "commonsense_qa": (
        [{"id": "075e483d", "question": "Where do you keep milk?", "question_concept": "milk",
          "choices": {"label": list("ABCDE"), "text": ["shelf", "garden", "fridge", "car", "roof"]}, "answerKey": "C"}],
        MC + "Where do you keep milk? Choices: A. shelf B. garden C. fridge D. car E. roof Answer:",
        (" A", " B", " C", " D", " E"), [2], ["075e483d"],
    ),
    "mmlu_college_chemistry": (
        [{"question": "What is the pH of pure water?", "subject": "college_chemistry", "choices": ["5", "7", "9", "11"],
          "answer": 1},
         {"question": "Which is a noble gas?", "subject": "college_chemistry", "choices": ["Ne", "Na", "N", "Ni"],
          "answer": 0}],
        MC + "What is the pH of pure water? Choices: A. 5 B. 7 C. 9 D. 11 Answer:",
        (" A", " B", " C", " D"), [1, 0], None,
    ),
    "wordpick": (
        [{"id": "wordpick-validation-0", "question": "Which word names a kind of fruit?", "answerKey": "B",
          "choices": {"label": list("ABCD"), "text": ["hammer", "mango", "violin", "France"]}}],
        MC + "Which word names a kind of fruit? Choices: A. hammer B. mango C. violin D. France Answer:",
        (" A", " B", " C", " D"), [1], ["wordpick-validation-0"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_task_builds_prompt_answers_gold_and_ids(name, tmp_path, llama_tokenizer, qwen_tokenizer):
    rows, prompt, answers, golds, ids = CASES[name]
    split = "validation"
    examples = load_examples(name, split, write_jsonl(tmp_path / f"{name}.jsonl", rows))
    assert examples[0].prompt == prompt
    assert [e.answers for e in examples] == [answers] * len(rows)
    assert [e.gold for e in examples] == golds
    assert [e.id for e in examples] == (ids or [f"{split}-{row}" for row in range(len(rows))])
    # The answers follow the prompt as one token each on both built-in tokenizers (byte-level BPE, with and
    # without BOS): the collator can score every task.
    for tokenizer in (llama_tokenizer, qwen_tokenizer):
        assert len(set(answer_token_ids(tokenizer, examples[0].prompt, answers))) == len(answers)


def test_every_registered_task_has_a_case_or_shares_one():
    families = {get_task(name).family for name in CASES}
    multiple_choice = [task for task in TASKS.values() if task.kind == MULTIPLE_CHOICE]
    assert {task.family for task in multiple_choice} - families == {"synthetic"}  # generative: test_generative_tasks


def test_winogrande_sizes_and_hub_configs():
    for size in ("xs", "s", "m", "l", "xl", "debiased"):
        task = get_task(f"winogrande_{size}")
        assert (task.hub_path, task.hub_config) == ("allenai/winogrande", f"winogrande_{size}")
        assert task.unlabelled_splits == {"test"}


# ---------------------------------------------------------------- ARC under the two protocol presets ---


def test_arc_numeric_labels_and_five_choices():
    example = arc_example(
        {"id": "q1", "question": "Which?", "choices": {"text": list("vwxyz"), "label": ["1", "2", "3", "4", "5"]},
         "answerKey": "4"}
    )  # fmt: skip
    assert example.gold == 3
    assert example.answers == (" A", " B", " C", " D", " E")
    assert example.prompt.endswith("Choices: A. v B. w C. x D. y E. z Answer:")


def test_ivon_lora_protocol_keeps_the_4_choice_subset_and_reports_the_drop(tmp_path, caplog):
    path = write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS)
    with caplog.at_level("INFO", logger="ivon_lora.tasks"):
        loaded = load_split("arc_easy", "validation", path)
    assert [e.id for e in loaded.examples] == ["Q-4A", "Q-4N"]
    assert [e.gold for e in loaded.examples] == [1, 0]  # numeric key "1" -> A
    assert all(e.answers == (" A", " B", " C", " D") for e in loaded.examples)
    assert loaded.dropped == {"4-choice subset": 3} and loaded.num_dropped == 3
    assert (loaded.num_rows, loaded.num_read, loaded.protocol) == (5, 5, "ivon-lora")
    summary = "dropped 3 of 5 rows (filter: 4-choice subset, protocol ivon-lora)"
    assert summary in loaded.summary() and summary in caplog.text
    assert loaded.as_dict()["dropped"] == {"4-choice subset": 3}
    assert load_examples("arc_easy", "validation", path) == loaded.examples


def test_blob_protocol_scores_every_arc_question_over_five_letters(tmp_path):
    loaded = load_split("arc_challenge", "validation", write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS), protocol="blob")
    assert [e.id for e in loaded.examples] == [row["id"] for row in ARC_ROWS]
    assert loaded.dropped == {} and loaded.num_dropped == 0
    assert all(e.answers == (" A", " B", " C", " D", " E") for e in loaded.examples)
    assert [e.gold for e in loaded.examples] == [1, 0, 0, 1, 4]
    # A 3-choice question still presents its own three choices.
    assert loaded.examples[2].prompt == MC + "Which is a planet? Choices: A. Mars B. Moon C. Sun Answer:"


def test_protocols_leave_the_other_tasks_alone(tmp_path):
    rows, _, answers, _, _ = CASES["commonsense_qa"]
    path = write_jsonl(tmp_path / "csqa.jsonl", rows)
    for protocol in PROTOCOLS:
        loaded = load_split("commonsense_qa", "validation", path, protocol=protocol)
        assert loaded.dropped == {} and [e.answers for e in loaded.examples] == [answers]
    rows, _, answers, _, _ = CASES["openbookqa"]
    blob = load_examples("openbookqa", "validation", write_jsonl(tmp_path / "obqa.jsonl", rows), protocol="blob")
    assert blob[0].answers == answers  # BLoB's OBQA is 4-way


def test_limit_counts_raw_records_before_the_filter(tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS)
    loaded = load_split("arc_easy", "validation", path, limit=3)
    assert [e.id for e in loaded.examples] == ["Q-4A", "Q-4N"]
    assert loaded.dropped == {"4-choice subset": 1} and loaded.num_read == 3
    assert loaded.summary() == (
        f"arc_easy validation ({path}): 2 examples from the first 3 of 5 rows (limit 3); "
        "dropped 1 of 3 rows (filter: 4-choice subset, protocol ivon-lora)"
    )
    with pytest.raises(ValueError, match="Invalid limit value: -1"):
        load_split("arc_easy", "validation", path, limit=-1)


def test_protocol_presets():
    ivon, blob = get_protocol("ivon-lora"), get_protocol("blob")
    assert (ivon.ece_bins, ivon.keep_num_choices, ivon.arc_answer_letters) == (10, 4, None)
    assert (blob.ece_bins, blob.keep_num_choices, blob.arc_answer_letters) == (15, None, 5)
    for protocol in (ivon, blob):
        assert protocol.report_split == "validation"
        assert json.loads(json.dumps(protocol.as_dict()))["name"] == protocol.name
    with pytest.raises(KeyError, match="Unknown protocol 'blb'. Did you mean 'blob'"):
        get_protocol("blb")
    with pytest.raises(ValueError, match="Invalid ece_bins value: 0"):
        Protocol("x", "", ece_bins=0)
    with pytest.raises(ValueError, match="Invalid arc_answer_letters value: 9"):
        Protocol("x", "", ece_bins=10, arc_answer_letters=9)


def test_a_question_with_more_choices_than_the_protocol_letters_is_an_error(tmp_path):
    row = arc_row("Q-6", "Six?", list("uvwxyz"), list("ABCDEF"), "F")
    with pytest.raises(RecordError, match=r"row 0: 6 choices do not fit protocol 'blob'"):
        load_examples("arc_easy", "train", write_jsonl(tmp_path / "six.jsonl", [row]), protocol="blob")


# ------------------------------------------------------------------------------- labels and errors ---


@pytest.mark.parametrize(
    "name, row, key, empty",
    [("winogrande_m", CASES["winogrande_s"][0][0], "answer", ""), ("piqa", CASES["piqa"][0][0], "label", -1),
     ("hellaswag", CASES["hellaswag"][0][1], "label", ""), ("commonsense_qa", CASES["commonsense_qa"][0][0],
     "answerKey", "")],
)  # fmt: skip
def test_unlabelled_test_splits_give_gold_minus_one(tmp_path, name, row, key, empty):
    path = write_jsonl(tmp_path / "test.jsonl", [{**row, key: empty}])
    loaded = load_split(name, "test", path)
    assert [e.gold for e in loaded.examples] == [-1] and loaded.num_unlabelled == 1
    assert "1 without a label (gold -1)" in loaded.summary()
    # Elsewhere a missing label is an error, not an unlabelled example.
    with pytest.raises(RecordError, match=rf"Task '{name}', split 'validation' .* row 0: the record has no label"):
        load_examples(name, "validation", path)


def test_a_bad_record_names_task_split_and_row(tmp_path):
    rows = synthetic_records("validation", 3)
    rows[2]["answerKey"] = "Z"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(RecordError, match=r"Task 'arc_easy', split 'validation' \(.*bad.jsonl\), row 2: answerKey 'Z'"):
        load_examples("arc_easy", "validation", str(path))


@pytest.mark.parametrize(
    "name, change, message",
    [("siqa", {"answerC": None}, r"missing field\(s\) \['answerC'\]"),
     ("piqa", {"sol2": ""}, r"missing field\(s\) \['sol2'\]"),
     ("winogrande_xl", {"answer": "3"}, r"answer '3' is not one of the labels \['1', '2'\]"),
     ("hellaswag", {"label": "4"}, r"label '4' is not one of the labels"),
     ("mmlu:college_chemistry", {"answer": 4}, r"answer 4 is not one of the labels"),
     ("arc_challenge", {"choices": {"text": ["a", "b"], "label": ["A"]}}, r"Invalid choices value: .* \(must hold 2-8 texts")],
)  # fmt: skip
def test_missing_fields_and_invalid_labels_name_task_split_and_row(tmp_path, name, change, message):
    good = CASES[_case(name)][0][0]
    task, split = get_task(name), "test" if name.startswith("mmlu") else "train"
    path = write_jsonl(tmp_path / "rows.jsonl", [good, {**good, "id": "other", **change}])
    with pytest.raises(RecordError, match=rf"Task '{task.name}', split '{split}' \(.*rows.jsonl\), row 1: {message}"):
        load_examples(name, split, path)


def test_boolq_answer_must_be_a_boolean():
    with pytest.raises(RecordError, match=r"Invalid answer value: 'yes' \(must be a boolean"):
        boolq_example({**CASES["boolq"][0][0], "answer": "yes"})


def _case(name):
    """The CASES key of `name`'s family (winogrande_xl -> winogrande_s, mmlu:anatomy -> mmlu_college_chemistry)."""
    family = get_task(name).family
    return next(key for key in CASES if get_task(key).family == family)


def test_ids_must_be_unique_within_a_split(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [ARC_ROWS[0], ARC_ROWS[0]])
    with pytest.raises(RecordError, match=r"row 1: id 'Q-4A' repeats the id of row 0"):
        load_examples("arc_challenge", "train", path)


# --------------------------------------------------------------------------------- names and the Hub ---


def test_unknown_task_suggests_the_closest():
    with pytest.raises(KeyError, match="Did you mean 'arc_easy'"):
        get_task("arc_eazy")
    with pytest.raises(KeyError, match="Unknown MMLU subject 'colege_chemistry'. Did you mean 'college_chemistry'"):
        get_task("mmlu_colege_chemistry")


def test_mmlu_subject_names():
    task = get_task("mmlu:college_chemistry")
    assert task is get_task("mmlu_college_chemistry") and task.name == "mmlu_college_chemistry"
    assert (task.hub_path, task.hub_config) == ("cais/mmlu", "college_chemistry")
    assert dict(task.splits) == {"test": "test", "validation": "validation", "dev": "dev"}
    assert "mmlu_world_religions" in task_names() and len([n for n in task_names() if n.startswith("mmlu_")]) == 58
    with pytest.raises(ValueError, match="has no split 'train'"):
        load_examples("mmlu_anatomy", "train")


@pytest.mark.parametrize(
    "name, split, call",
    [("arc_challenge", "validation", ("allenai/ai2_arc", "ARC-Challenge", "validation", None)),
     ("openbookqa", "test", ("allenai/openbookqa", "main", "test", None)),
     ("winogrande_s", "train", ("allenai/winogrande", "winogrande_s", "train", None)),
     ("boolq", "validation", ("google/boolq", None, "validation", None)),
     ("piqa", "validation", ("ybisk/piqa", "default", "validation", "refs/convert/parquet")),
     ("siqa", "train", ("allenai/social_i_qa", "default", "train", "refs/convert/parquet")),
     ("hellaswag", "validation", ("Rowan/hellaswag", None, "validation", None)),
     ("commonsense_qa", "validation", ("tau/commonsense_qa", None, "validation", None)),
     ("mmlu:college_chemistry", "dev", ("cais/mmlu", "college_chemistry", "dev", None))],
)  # fmt: skip
def test_the_hub_is_called_with_path_config_split(monkeypatch, name, split, call):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split, revision=None):
        calls.append((path, name, split, revision))
        return CASES[_case_of(path)][0][:1]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_split(name, split)
    assert calls == [call]
    assert len(loaded.examples) == 1 and loaded.source.startswith(call[0])


def _case_of(hub_path):
    return next(key for key in CASES if get_task(key).hub_path == hub_path)


# ----------------------------------------------------------------------------------------- local files ---


def test_local_jsonl_in_the_hub_schema(tmp_path):
    path = tmp_path / "arc.jsonl"
    rows = synthetic_records("validation", 3)
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples = load_examples("arc_challenge", "validation", str(path))
    assert [e.id for e in examples] == [r["id"] for r in rows]


def test_local_parquet_json_and_directory(tmp_path):
    import datasets

    rows = CASES["hellaswag"][0]
    parquet = tmp_path / "hellaswag.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    from_parquet = load_examples("hellaswag", "validation", parquet)
    json_file = tmp_path / "hellaswag.json"
    json_file.write_text(json.dumps(rows))
    assert load_examples("hellaswag", "validation", str(json_file)) == from_parquet
    # A directory of one split's files: read in name order, ids continue across files.
    directory = tmp_path / "dir"
    directory.mkdir()
    write_jsonl(directory / "b.jsonl", [rows[1]])
    write_jsonl(directory / "a.jsonl", [rows[0]])
    from_dir = load_examples("hellaswag", "validation", str(directory))
    assert from_dir == from_parquet
    assert [e.id for e in from_dir] == ["validation-0", "validation-1"]


def test_unusable_local_data_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_examples("boolq", "train", str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TaskDataError, match=r"Data directory '.*empty' holds no data files"):
        load_examples("boolq", "train", str(empty))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text("{}")
    (mixed / "b.csv").write_text("question\n")
    with pytest.raises(TaskDataError, match=r"Data directory '.*mixed' mixes file types \['.csv', '.jsonl'\]"):
        load_examples("boolq", "train", str(mixed))
    text = tmp_path / "rows.txt"
    text.write_text("")
    with pytest.raises(TaskDataError, match=r"Unsupported data file type '.txt' in '.*rows.txt'"):
        load_examples("boolq", "train", str(text))


def test_synthetic_task_is_deterministic_and_noisy():
    first, second = synthetic_records("train", 200), synthetic_records("train", 200)
    assert first == second
    assert synthetic_records("validation", 5) != synthetic_records("test", 5)
    clean = synthetic_records("train", 2000, label_noise=0.0)
    noisy = synthetic_records("train", 2000)
    flipped = sum(a["answerKey"] != b["answerKey"] for a, b in zip(clean, noisy)) / 2000
    assert 0.1 < flipped < 0.2


def test_synthetic_examples_use_the_shared_frame():
    example = load_examples("synthetic", "validation", limit=1)[0]
    assert example.id == "synthetic-validation-0"
    assert example.prompt.startswith(MC_TEMPLATE.split("{")[0]) and example.answers == (" A", " B", " C", " D")


def test_wordfacts_is_deterministic_balanced_and_noisy_in_train_only():
    from ivon_lora.tasks.wordfacts import CATEGORIES, SPLIT_SIZES, wordfacts_records

    assert wordfacts_records("train") == wordfacts_records("train")
    assert {split: len(wordfacts_records(split)) for split in SPLIT_SIZES} == {
        "train": 256,
        "validation": 200,
        "test": 300,
    }
    for split in ("train", "validation", "test"):
        clean, noisy = wordfacts_records(split, 2000, label_noise=0.0), wordfacts_records(split, 2000)
        assert [r["question"] for r in clean] == [r["question"] for r in noisy]  # noise does not move the questions
        flipped = sum(a["answer"] != b["answer"] for a, b in zip(clean, noisy)) / 2000
        assert (0.12 < flipped < 0.18) if split == "train" else flipped == 0
        # Clean labels are the truth: the question names the word's own category exactly when the answer is True.
        for record in clean:
            category = record["question"].split()[-1]
            word = next(w for w in record["question"].split() if any(w in words for _, words in CATEGORIES.values()))
            assert record["answer"] == (word in CATEGORIES[category][1])
            assert record["passage"] == CATEGORIES[category][0]
        assert 0.45 < sum(r["answer"] for r in clean) / 2000 < 0.55


def test_wordfacts_marks_its_flipped_labels_without_changing_the_splits():
    import hashlib
    import json

    from ivon_lora.tasks.wordfacts import wordfacts_records

    # sha256 of each split's records as generated before `label_flipped` existed (sorted-key JSON).
    before = {"train": "0185d140b0aa728f3e4574e44a90ccd748df7f45d737ec3a01f1432965f0d9d4",
              "validation": "8e799ee190729b4f750fe0298e9071d4103dd17f53ef47eb623889d561d36716",
              "test": "7c9e4750f827fdb5bbb5349042c964859dba3c8397497c0debefb11dc03a45b4"}  # fmt: skip
    for split, digest in before.items():
        records = wordfacts_records(split)
        flips = [record.pop("label_flipped") for record in records]
        assert hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest() == digest
        clean = wordfacts_records(split, label_noise=0.0)
        assert flips == [a["answer"] != b["answer"] for a, b in zip(records, clean)]
        assert (sum(flips) == 38) if split == "train" else not any(flips)


def test_wordfacts_clean_is_wordfacts_with_every_train_label_restored():
    clean, noisy = load_examples("wordfacts_clean", "train"), load_examples("wordfacts", "train")
    assert [e.prompt for e in clean] == [e.prompt for e in noisy]
    assert sum(a.gold != b.gold for a, b in zip(clean, noisy)) == 38  # wordfacts' flipped labels, and only those
    assert not any(record["label_flipped"] for record in get_task("wordfacts_clean").generator("train"))
    for split in ("validation", "test"):  # already clean in wordfacts
        assert load_examples("wordfacts_clean", split) == load_examples("wordfacts", split)


def test_wordfacts_examples_score_true_false_after_a_short_prompt(llama_tokenizer, qwen_tokenizer):
    example = load_examples("wordfacts", "test", limit=1)[0]
    assert example.id == "wordfacts-test-0" and example.answers == (" False", " True")
    assert example.prompt.startswith("True or False: ") and example.prompt.endswith("? Answer:")
    for tokenizer in (llama_tokenizer, qwen_tokenizer):
        assert len(set(answer_token_ids(tokenizer, example.prompt, example.answers))) == 2
