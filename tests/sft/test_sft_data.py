"""SFT data (ivon_lora.sft.data): the three formats from local files, the Hub path, built-in wordqa, row errors,
and that TRL's SFTTrainer prepares a loaded split with the loss mask its format implies."""

import json
import re

import datasets
import pytest

from ivon_lora.errors import RecordError, TaskDataError
from ivon_lora.sft.data import load_sft_split
from ivon_lora.tasks.wordqa import SPLIT_SIZES, word_categories, wordqa_records

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}]  # fmt: skip
ROWS = {
    "messages": [{"messages": CHAT}, {"messages": CHAT[1:], "id": "extra columns are dropped"}],
    "prompt-completion": [{"prompt": "2 + 2 =", "completion": " 4"}, {"prompt": "3 + 3 =", "completion": " 6"}],
    "prompt-completion-chat": [{"prompt": CHAT[:2], "completion": CHAT[2:]},
                               {"prompt": CHAT[1:2], "completion": CHAT[2:]}],
    "alpaca": [{"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
               {"instruction": "Name a fruit.", "input": "", "output": "mango", "system": "Be brief."}],
}  # fmt: skip


def write(path, rows):
    """`rows` as a .json array, .jsonl lines or a .parquet table at `path`."""
    if path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows))
    return str(path)


@pytest.mark.parametrize("ext", ["json", "jsonl", "parquet"])
@pytest.mark.parametrize("name", list(ROWS))
def test_each_format_loads_from_each_file_type(tmp_path, name, ext):
    path = write(tmp_path / f"train.{ext}", ROWS[name])
    split = load_sft_split(None, "train", path)
    assert split.format == name.removesuffix("-chat")
    assert (split.source, split.split, len(split.dataset)) == (path, "train", 2)
    if name == "alpaca":
        assert split.dataset.column_names == ["prompt", "completion"]
    else:  # the rows as written, only the format's columns
        columns = ["messages"] if name == "messages" else ["prompt", "completion"]
        assert split.dataset.column_names == columns
        assert split.dataset.to_list() == [{key: row[key] for key in columns} for row in ROWS[name]]
    assert split.as_dict() == {"source": path, "config_name": None, "split": "train", "format": split.format,
                               "rows": 2, "source_rows": 2, "max_samples": None}  # fmt: skip


def test_alpaca_becomes_conversational_prompt_completion(tmp_path):
    rows = ROWS["alpaca"] + [{"instruction": "Say hi.", "output": "hi", "input": None, "system": ""}]
    split = load_sft_split(None, "train", write(tmp_path / "a.jsonl", rows))
    assert split.dataset.to_list() == [
        {"prompt": [{"role": "user", "content": "Add the numbers.\n\n2 and 2"}],
         "completion": [{"role": "assistant", "content": "4"}]},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
         "completion": [{"role": "assistant", "content": "mango"}]},
        {"prompt": [{"role": "user", "content": "Say hi."}], "completion": [{"role": "assistant", "content": "hi"}]},
    ]  # fmt: skip


BAD_ROWS = {
    "content not a string": ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
                             "Invalid messages[0] content value: 3 (must be a string)"),
    "no assistant": ({"messages": [{"role": "user", "content": "hi"}]}, "from 'user', not the assistant"),
    "last not assistant": ({"messages": CHAT + [{"role": "user", "content": "and?"}]}, "not the assistant"),
    "unknown role": ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0] has role 'bot'"),
    "tool call": ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}]},
                  "messages[0] has field(s) ['tool_calls']"),
    "empty messages": ({"messages": []}, "Invalid messages value: [] (must be a non-empty list of messages)"),
    "empty answer": ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
                     "last assistant message of messages is empty"),
    "messages missing": ({"id": 7}, "Invalid messages value: None (must be a non-empty list of messages)"),
    "prompt string, completion list": ({"prompt": "q", "completion": CHAT[2:]},
                                       "values: a str and a list (must be two strings or two message lists)"),
    "completion empty": ({"prompt": "q", "completion": ""}, "completion is empty"),
    "completion from user": ({"prompt": CHAT[:1], "completion": CHAT[1:2]},
                             "last message of completion is from 'user'"),
    "kinds mixed": ({"prompt": CHAT[:2], "completion": CHAT[2:]}, "message lists, but in"),
    "output missing": ({"instruction": "x", "output": None}, "Invalid output value: None (must be a string)"),
    "input not a string": ({"instruction": "x", "input": 2, "output": "y"}, "Invalid input value: 2 (must be a string if given)"),
    "not an object": ([1, 2], "a row is an object of fields, got list"),
}  # fmt: skip


GOOD_FIRST = {"prompt": ROWS["prompt-completion"], "instruction": ROWS["alpaca"]}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_one_line_naming_file_and_row(tmp_path, case):
    bad, what = BAD_ROWS[case]
    # A good row of the bad row's format first (string prompt-completion for prompt rows), so the format is found.
    first = next((rows[0] for key, rows in GOOD_FIRST.items() if key in bad), ROWS["messages"][0])
    path = write(tmp_path / "train.jsonl", [first, bad, first])
    with pytest.raises(RecordError) as error:
        load_sft_split(None, "train", path)
    message = str(error.value)
    assert message.startswith(f"{path}, row 1: ") and what in message and "\n" not in message, message


def test_a_directory_names_the_file_of_the_bad_row(tmp_path):
    write(tmp_path / "a.jsonl", ROWS["messages"])
    write(tmp_path / "b.jsonl", ROWS["messages"] + [{"messages": CHAT[:2]}])
    with pytest.raises(RecordError, match=r"b\.jsonl, row 2: the last message of messages is from 'user'"):
        load_sft_split(None, "train", str(tmp_path))
    write(tmp_path / "b.jsonl", ROWS["messages"])
    assert len(load_sft_split(None, "train", str(tmp_path)).dataset) == 4


@pytest.mark.parametrize(
    "rows, problem",
    [
        (ROWS["messages"] + ROWS["prompt-completion"], "mix the formats messages and prompt-completion"),
        ([{"question": "q", "answer": "a"}], "are in no SFT format"),
        ([{"instruction": "q", "response": "a"}], "are in no SFT format"),
    ],
)
def test_mixed_or_unknown_columns_name_the_columns_and_the_formats(tmp_path, rows, problem):
    path = write(tmp_path / "train.json", rows)
    with pytest.raises(TaskDataError) as error:
        load_sft_split(None, "train", path)
    message = str(error.value)
    assert message.startswith(f"{path}: the rows {problem} (columns found: [")
    assert all(f"'{column}'" in message for row in rows for column in row)
    assert '"messages"' in message and '"prompt" + "completion"' in message and '"instruction" + "output"' in message


def test_an_empty_split_is_an_error(tmp_path):
    with pytest.raises(TaskDataError, match="holds no rows"):
        load_sft_split(None, "train", write(tmp_path / "empty.json", []))


def test_max_samples_keeps_the_first_rows(tmp_path):
    rows = [{"prompt": f"{i} + 1 =", "completion": f" {i + 1}"} for i in range(5)]
    split = load_sft_split(None, "train", write(tmp_path / "t.jsonl", rows), max_samples=3)
    assert split.dataset.to_list() == rows[:3]
    assert (split.as_dict()["rows"], split.as_dict()["source_rows"], split.as_dict()["max_samples"]) == (3, 5, 3)
    # Rows past max_samples are not read as training data, so neither are they checked.
    path = write(tmp_path / "u.jsonl", rows[:2] + [{"prompt": "x", "completion": ""}])
    assert len(load_sft_split(None, "train", path, max_samples=2).dataset) == 2
    with pytest.raises(ValueError, match="Invalid max_samples value: 0"):
        load_sft_split(None, "train", path, max_samples=0)


def test_hub_dataset_is_loaded_with_its_config_and_split(monkeypatch):
    calls = []
    rows = [{"prompt": "ignored", "prompt_id": str(i), "messages": CHAT} for i in range(4)]  # ultrachat_200k's columns

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    split = load_sft_split("HuggingFaceH4/ultrachat_200k", "train_sft", config_name="default", max_samples=3)
    assert calls == [("HuggingFaceH4/ultrachat_200k", "default", "train_sft", {})]
    assert split.format == "messages" and split.dataset.column_names == ["messages"]
    assert split.dataset.to_list() == [{"messages": CHAT}] * 3
    assert split.as_dict() == {"source": "HuggingFaceH4/ultrachat_200k", "config_name": "default",
                               "split": "train_sft", "format": "messages", "rows": 3, "source_rows": 4,
                               "max_samples": 3}  # fmt: skip

    rows[1] = {"prompt": "x", "prompt_id": "1", "messages": CHAT[:2]}
    with pytest.raises(RecordError, match=r"^org/chat:default \(split 'train'\), row 1: the last message of messages"):
        load_sft_split("org/chat", "train", config_name="default")
    assert calls[-1][:3] == ("org/chat", "default", "train")


def test_an_unreachable_hub_dataset_is_one_line_naming_it():
    # The tests run with HF_DATASETS_OFFLINE=1 (conftest): the real `datasets.load_dataset` fails at once.
    with pytest.raises(TaskDataError) as error:
        load_sft_split("nobody/no-such-sft-data", "train")
    message = str(error.value)
    assert "'nobody/no-such-sft-data' split 'train'" in message and "train_file / eval_file" in message
    assert "\n" not in message


def test_builtin_names_and_errors():
    assert load_sft_split("builtin:wordqa", "validation").dataset.to_list() == (
        load_sft_split("wordqa", "validation").dataset.to_list()
    )
    with pytest.raises(TaskDataError, match="Did you mean 'wordqa'"):
        load_sft_split("builtin:wordqaa", "train")
    with pytest.raises(TaskDataError, match="builtin:wordqa has no split 'dev'; available: train, validation, test"):
        load_sft_split("wordqa", "dev")


def test_wordqa_is_deterministic_split_by_word_and_accepts_every_category():
    records = {split: wordqa_records(split) for split in SPLIT_SIZES}
    assert records == {split: wordqa_records(split) for split in SPLIT_SIZES}
    assert {split: len(rows) for split, rows in records.items()} == {"train": 149, "validation": 50, "test": 50}
    categories = word_categories()
    by_lower = {word.lower(): word for word in categories}
    words = {}
    for split, rows in records.items():
        for record in rows:
            # The question names exactly one word of the categories, and every category of that word is accepted.
            (word,) = [by_lower[token] for token in re.findall(r"\w+", record["question"].lower()) if token in by_lower]
            assert record["answers"] == list(categories[word])
            assert record["question"].endswith("Answer with one word.") and len(record["question"]) < 64
            words.setdefault(word, []).append(split)
    assert sorted(words) == sorted(categories) and all(len(splits) == 1 for splits in words.values())
    assert categories["orange"] == ("fruit", "color")
    assert len({record["id"] for rows in records.values() for record in rows}) == 249

    split = load_sft_split("wordqa", "train", max_samples=2)
    assert (split.source, split.format) == ("builtin:wordqa", "prompt-completion")
    assert split.dataset.to_list() == [
        {"prompt": [{"role": "user", "content": record["question"]}],
         "completion": [{"role": "assistant", "content": record["answers"][0]}]}
        for record in records["train"][:2]
    ]  # fmt: skip


# ChatML with the assistant turn (content and end-of-turn) inside {% generation %}: what assistant_only_loss needs.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _prepared(tmp_path, tokenizer, split, **config):
    """TRL's SFTTrainer built on `split` (a tiny Qwen2 of the tokenizer's vocabulary): its prepared train rows."""
    import torch
    import trl

    from ivon_lora.builtin import BUILTIN_MODELS, build_tiny_model

    torch.set_num_threads(1)
    model = build_tiny_model(BUILTIN_MODELS["builtin:tiny-qwen2"], tokenizer)
    config = {"max_length": 64, **config}
    args = trl.SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, report_to="none", use_cpu=True, **config)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=split.dataset, processing_class=tokenizer)
    return trainer.train_dataset


def _learnt_text(tokenizer, row) -> str:
    return tokenizer.decode([token for token, label in zip(row["input_ids"], row["labels"]) if label != -100])


def test_trl_learns_only_the_assistant_turn_of_messages(tmp_path):
    from family_tokenizers import qwen_tokenizer

    tokenizer = qwen_tokenizer(thinking=False)
    tokenizer.chat_template = CHATML_TRAINING_TEMPLATE
    split = load_sft_split(None, "train", write(tmp_path / "t.jsonl", ROWS["messages"]))
    prepared = _prepared(tmp_path, tokenizer, split, assistant_only_loss=True)
    assert len(prepared) == len(ROWS["messages"])
    for row, source in zip(prepared, split.dataset):
        assert _learnt_text(tokenizer, row) == source["messages"][-1]["content"] + "<|im_end|>"
        assert row["input_ids"] == tokenizer.apply_chat_template(source["messages"], tokenize=True)["input_ids"]


def test_trl_learns_only_the_answer_of_wordqa(tmp_path):
    """wordqa's prompt-completion rows: TRL learns the answer and its end of turn, with any chat template."""
    from family_tokenizers import qwen_tokenizer

    tokenizer = qwen_tokenizer(thinking=False)
    split = load_sft_split("wordqa", "train", max_samples=4)
    prepared = _prepared(tmp_path, tokenizer, split, max_length=128)  # Qwen2.5's default system prompt included
    for row, source in zip(prepared, split.dataset):
        assert _learnt_text(tokenizer, row) == source["completion"][-1]["content"] + "<|im_end|>\n"


@pytest.mark.parametrize("name", ["alpaca", "prompt-completion"])
def test_trl_learns_only_the_completion_of_prompt_completion_rows(tmp_path, name):
    from family_tokenizers import llama3_tokenizer

    tokenizer = llama3_tokenizer()
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    split = load_sft_split(None, "train", write(tmp_path / "t.jsonl", ROWS[name]))
    # Llama-3's template renders a dated system preamble: 256 tokens hold it with the rows.
    prepared = _prepared(tmp_path, tokenizer, split, max_length=256)
    assert len(prepared) == 2
    for row, source in zip(prepared, ROWS[name]):
        # The completion and its end of turn (TRL adds the EOS to a plain-text completion).
        answer = source["completion"] if name == "prompt-completion" else source["output"]
        assert _learnt_text(tokenizer, row) == answer + "<|eot_id|>"
