"""Generative tasks (TriviaQA, NQ-open, GSM8K) on local rows in the Hub's schemas, the Hub call, record errors that
name the file and row, the task kinds; and the judges (SQuAD exact match and F1, GSM8K numeric match)."""

import json
from fractions import Fraction

import pytest

from ivon_lora.tasks import (
    GENERATIVE,
    JUDGES,
    MULTIPLE_CHOICE,
    TASKS,
    GenerativeTask,
    RecordError,
    TaskDataError,
    get_judge,
    get_task,
    load_generative_split,
    load_split,
    task_names,
)
from ivon_lora.tasks.generative import qa_example
from ivon_lora.tasks.judges import exact_match, extract_number, normalize_answer, numeric_match, token_f1


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def triviaqa_row(question_id, question, value, aliases):
    """A row of mandarjoshi/trivia_qa rc.nocontext: the evidence fields are present and empty."""
    return {
        "question": question, "question_id": question_id, "question_source": "http://www.quizballs.com/",
        "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
        "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [], "search_context": []},
        "answer": {"aliases": aliases, "normalized_aliases": [normalize_answer(a) for a in aliases],
                   "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                   "normalized_value": normalize_answer(value), "type": "WikipediaEntity", "value": value},
    }  # fmt: skip


TRIVIAQA_ROWS = [
    triviaqa_row("tc_33", "Which Lloyd Webber musical premiered in the US on 10th December 1993?", "Sunset Boulevard",
                 ["Sunset Blvd", "Sunset Boulevard", "West Sunset Boulevard"]),
    triviaqa_row("tc_40", "Who was the man behind The Chipmunks?", "David Seville", ["David Seville"]),
]  # fmt: skip
NQ_ROWS = [
    {"question": "where is the eiffel tower located", "answer": ["Paris", "Paris, France"]},
    {"question": "how many legs does a spider have", "answer": ["eight", "8"]},
]
GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "A shop sells 1000 pens a day. How many in 2 days?",
     "answer": "1000*2=<<1000*2=2000>>2000\n#### 2,000"},
]  # fmt: skip

# name -> (rows, first prompt, references per row, first target, ids, split)
CASES = {
    "triviaqa": (
        TRIVIAQA_ROWS,
        "Question: Which Lloyd Webber musical premiered in the US on 10th December 1993?\nAnswer:",
        [("Sunset Boulevard", "Sunset Blvd", "West Sunset Boulevard"), ("David Seville",)],
        " Sunset Boulevard", ["tc_33", "tc_40"], "validation",
    ),
    "nq_open": (
        NQ_ROWS, "Question: where is the eiffel tower located?\nAnswer:",
        [("Paris", "Paris, France"), ("eight", "8")], " Paris", ["validation-0", "validation-1"], "validation",
    ),
    "gsm8k": (
        GSM8K_ROWS, "Question: " + GSM8K_ROWS[0]["question"] + "\nAnswer:", [("72",), ("2,000",)],
        " " + GSM8K_ROWS[0]["answer"], ["test-0", "test-1"], "test",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_generative_task_builds_prompt_references_target_and_ids(name, tmp_path):
    rows, prompt, references, target, ids, split = CASES[name]
    loaded = load_generative_split(name, split, write_jsonl(tmp_path / f"{name}.jsonl", rows))
    examples = loaded.examples
    assert examples[0].prompt == prompt and examples[0].target == target
    assert [e.references for e in examples] == references
    assert [e.id for e in examples] == ids
    assert examples[0].prompt == f"Question: {examples[0].question}\nAnswer:"
    assert (loaded.protocol, loaded.dropped, loaded.num_unlabelled, loaded.num_rows) == (None, {}, 0, len(rows))
    source = tmp_path / f"{name}.jsonl"
    assert loaded.summary() == f"{name} {split} ({source}): {len(rows)} examples from {len(rows)} rows"
    # The learning target is judged correct against the references.
    task = get_task(name)
    assert task.judge.correct(examples[0].target, examples[0].references)


def test_local_parquet_and_json_in_the_hub_schema(tmp_path):
    import datasets

    from_jsonl = load_generative_split("triviaqa", "train", write_jsonl(tmp_path / "t.jsonl", TRIVIAQA_ROWS)).examples
    parquet = tmp_path / "t.parquet"
    datasets.Dataset.from_list(TRIVIAQA_ROWS).to_parquet(str(parquet))
    assert load_generative_split("triviaqa", "train", parquet).examples == from_jsonl
    (tmp_path / "t.json").write_text(json.dumps(TRIVIAQA_ROWS))
    assert load_generative_split("triviaqa", "train", str(tmp_path / "t.json")).examples == from_jsonl
    assert load_generative_split("triviaqa", "train", parquet, limit=1).examples == from_jsonl[:1]


@pytest.mark.parametrize(
    "name, split, call",
    [("triviaqa", "validation", ("mandarjoshi/trivia_qa", "rc.nocontext", "validation", None)),
     ("nq_open", "validation", ("google-research-datasets/nq_open", "nq_open", "validation", None)),
     ("gsm8k", "test", ("openai/gsm8k", "main", "test", None))],
)  # fmt: skip
def test_the_hub_is_called_with_path_config_split(monkeypatch, name, split, call):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split, revision=None):
        calls.append((path, name, split, revision))
        return CASES[next(key for key in CASES if get_task(key).hub_path == path)][0]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_generative_split(name, split)
    assert calls == [call] and len(loaded.examples) == 2 and loaded.source == f"{call[0]}:{call[1]}"


@pytest.mark.parametrize(
    "name, row, message",
    [("triviaqa", {**TRIVIAQA_ROWS[0], "answer": {"value": "", "aliases": []}}, "answer.value/aliases holds no refer"),
     ("triviaqa", {**TRIVIAQA_ROWS[0], "answer": "Sunset Boulevard"}, "Invalid answer value: 'Sunset Boulevard' \\(must be an object"),
     ("triviaqa", {**TRIVIAQA_ROWS[0], "answer": {"value": "x", "aliases": "x"}}, r"Invalid answer.aliases value: 'x' \(must be a list"),
     ("nq_open", {"question": "who", "answer": "Paris"}, r"Invalid answer value: 'Paris' \(must be a list of answer strings"),
     ("nq_open", {"question": "who", "answer": [""]}, "answer holds no reference answer"),
     ("nq_open", {"answer": ["Paris"]}, r"missing field\(s\) \['question'\]"),
     ("gsm8k", {"question": "How many?", "answer": "It is 5."}, r"Invalid answer value: 'It is 5.' \(must end in '#### <number>'"),
     ("gsm8k", {"question": "How many?", "answer": "#### five"}, r"Invalid answer value: '#### five' \(must end in '#### <number>'"),
     ("gsm8k", ["not", "an", "object"], "a record is a JSON object of fields, got list")],
)  # fmt: skip
def test_a_bad_row_is_one_error_naming_task_split_file_and_row(tmp_path, name, row, message):
    rows, *_, split = CASES[name]
    path = write_jsonl(tmp_path / "rows.jsonl", [rows[1], row])
    with pytest.raises(RecordError, match=rf"Task '{name}', split '{split}' \(.*rows.jsonl\), row 1: {message}"):
        load_generative_split(name, split, path)


def test_ids_must_be_unique_and_splits_exist(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [TRIVIAQA_ROWS[0], TRIVIAQA_ROWS[0]])
    with pytest.raises(RecordError, match=r"row 1: id 'tc_33' repeats the id of row 0"):
        load_generative_split("triviaqa", "train", path)
    with pytest.raises(ValueError, match="Task 'gsm8k' has no split 'validation'; available: train, test"):
        load_generative_split("gsm8k", "validation", path)
    with pytest.raises(ValueError, match="Invalid limit value: -1"):
        load_generative_split("gsm8k", "test", path, limit=-1)


def test_the_kind_is_visible_and_each_loader_refuses_the_other_kind(tmp_path):
    assert {name: get_task(name).kind for name in ("triviaqa", "nq_open", "gsm8k", "arc_easy", "mmlu_anatomy")} == {
        "triviaqa": GENERATIVE, "nq_open": GENERATIVE, "gsm8k": GENERATIVE, "arc_easy": MULTIPLE_CHOICE,
        "mmlu_anatomy": MULTIPLE_CHOICE}  # fmt: skip
    assert {"triviaqa", "nq_open", "gsm8k", "arc_easy"} <= set(task_names()) and set(TASKS) <= set(task_names())
    assert get_task("gsm8k").as_dict() == {
        "name": "gsm8k", "kind": "generative", "version": 1, "hub_path": "openai/gsm8k", "hub_config": "main",
        "hub_revision": None, "judge": "numeric_match", "report_judges": ["numeric_match"], "max_new_tokens": 256,
        "stop": ["Question:"]}  # fmt: skip
    assert get_task("arc_easy").as_dict()["kind"] == MULTIPLE_CHOICE
    path = write_jsonl(tmp_path / "nq.jsonl", NQ_ROWS)
    with pytest.raises(TaskDataError, match="'nq_open' is a generative task, not a multiple-choice one: load it with "
                                            "load_generative_split"):  # fmt: skip
        load_split("nq_open", "validation", path)
    with pytest.raises(TaskDataError, match="'arc_easy' is a multiple-choice task, not a generative one: load it with "
                                            "load_split"):  # fmt: skip
        load_generative_split("arc_easy", "validation", path)
    with pytest.raises(KeyError, match="Did you mean 'triviaqa'"):
        get_task("trivia_qa")


def test_a_generative_task_checks_its_own_fields():
    with pytest.raises(ValueError, match="Invalid max_new_tokens value: 0"):
        GenerativeTask("x", qa_example, max_new_tokens=0)
    with pytest.raises(ValueError, match="its judge 'numeric_match' must be one of its report_judges"):
        GenerativeTask("x", qa_example, judge=JUDGES["numeric_match"])
    with pytest.raises(KeyError, match="Unknown judge 'exact'. Did you mean 'exact_match'"):
        get_judge("exact")


def test_qa_example_reads_any_answers_field():
    """The schema of the built-in offline task (rows {"id", "question", "answers"})."""
    row = {"id": "w-1", "question": "What colour is a lemon", "answers": ["yellow"]}
    example = qa_example(row, answers_key="answers")
    assert (example.prompt, example.references, example.target) == (
        "Question: What colour is a lemon?\nAnswer:",
        ("yellow",),
        " yellow",
    )


# ------------------------------------------------------------------------------------------------ judges ---


def test_squad_normalisation():
    assert normalize_answer("  The Eiffel\tTower! ") == "eiffel tower"
    assert normalize_answer("An apple a day, the doctor's away.") == "apple day doctors away"
    assert normalize_answer("Theatre anthem") == "theatre anthem"  # articles only as whole words


def test_exact_match_takes_the_max_over_references():
    assert exact_match("the Sunset Blvd.", ["Sunset Boulevard", "Sunset Blvd"]) == 1.0
    assert exact_match("Sunset", ["Sunset Boulevard", "Sunset Blvd"]) == 0.0
    assert exact_match("", ["Paris"]) == 0.0
    assert exact_match("The", ["a"]) == 1.0  # both normalise to nothing, as SQuAD compares them
    with pytest.raises(ValueError, match="non-empty list of reference answers"):
        exact_match("Paris", [])
    with pytest.raises(ValueError, match="non-empty list of reference answers"):
        exact_match("Paris", "Paris")


def test_token_f1_known_answers():
    # "big red dog" vs "red dog": precision 2/3, recall 1 -> F1 0.8.
    assert token_f1("The big red dog", ["red dog"]) == pytest.approx(0.8)
    assert token_f1("The big red dog", ["cat", "red dog", "big red dog"]) == 1.0
    # Repeated tokens count as often as both sides have them: "red red" vs "red dog": 1 common -> P 1/2, R 1/2.
    assert token_f1("red red", ["red dog"]) == pytest.approx(0.5)
    assert token_f1("", ["Paris"]) == 0.0 and token_f1("blue", ["Paris"]) == 0.0
    assert token_f1("an", ["the"]) == 1.0  # both empty after normalisation (SQuAD v2.0)


@pytest.mark.parametrize(
    "text, number",
    [("#### 72", 72), ("so 1,000 pens", 1000), ("It costs $3.50.", Fraction(7, 2)), ("-7 degrees", -7),
     ("is -$5 or $-5", -5), ("Natalia sold 48/2 = 24 in May.\n#### 72\nThen 5 more", 72), ("5-3=2", 2),
     ("between 3-5", 5), ("1,2,3", 3), ("about .5", Fraction(1, 2)), ("no number here", None), ("", None)],
)  # fmt: skip
def test_extract_number(text, number):
    assert extract_number(text) == number


def test_numeric_match():
    assert numeric_match("So the answer is 1000.", ["1,000"]) == 1.0
    assert numeric_match("#### 3.50", ["3.5"]) == 1.0
    assert numeric_match("$-12", ["-12"]) == 1.0 and numeric_match("12", ["-12"]) == 0.0
    assert numeric_match("I don't know", ["4"]) == 0.0 and numeric_match("", ["4"]) == 0.0
    assert numeric_match("#### 4\nthen 9", ["4"]) == 1.0 and numeric_match("4 then 9", ["4"]) == 0.0
    assert numeric_match("7", ["5", "7"]) == 1.0


def test_judges_decide_correctness_and_equivalence_symmetrically():
    exact, f1, numeric = JUDGES["exact_match"], JUDGES["token_f1"], JUDGES["numeric_match"]
    assert exact.correct("the Paris", ["Paris, France", "Paris"]) and not exact.correct("Paris France!", ["Paris"])
    assert f1.correct("france, paris", ["Paris France"]) and not f1.correct("Paris", ["Paris France"])
    pairs = [("Paris", "the paris."), ("Paris", "Paris France"), ("#### 5", "5.0"), ("5", "6"), ("", "")]
    for judge in (exact, f1, numeric):
        for first, second in pairs:
            assert judge.equivalent(first, second) == judge.equivalent(second, first)
    assert exact.equivalent("Paris", "the paris.") and not exact.equivalent("Paris", "Paris France")
    assert numeric.equivalent("#### 5", "5.0") and not numeric.equivalent("", "")  # no number: nothing to match
