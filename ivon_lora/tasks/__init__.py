"""Task registry: each task is data (where its records live, which splits, how a record becomes a prompt).

Records load from the Hugging Face Hub with `datasets.load_dataset`, or from local json/jsonl/parquet/csv files in
the same schema (`data_files`), or, for the built-in synthetic task, from a deterministic generator.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..objective import ChoiceExample
from .synthetic import synthetic_records

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGH"
MC_TEMPLATE = "Select one of the choices that answers the following question: {question} Choices: {choices} Answer:"


class RecordError(ValueError):
    """A record that does not fit its task's schema."""


@dataclass(frozen=True)
class Task:
    name: str
    build_example: Callable[[dict], ChoiceExample]
    hub_path: str | None = None
    hub_config: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation"})
    version: int = 1
    description: str = ""


def _require(record: dict, *keys: str) -> None:
    missing = [k for k in keys if record.get(k) in (None, "")]
    if missing:
        raise RecordError(f"missing field(s) {missing}")


def arc_example(record: dict, question_key: str = "question") -> ChoiceExample:
    """ARC / OpenBookQA schema: question, choices{text[], label[]}, answerKey (letters, or digits 1-5)."""
    _require(record, question_key, "choices", "answerKey")
    texts, labels = record["choices"]["text"], [str(label) for label in record["choices"]["label"]]
    if len(texts) != len(labels) or not 2 <= len(texts) <= len(LETTERS):
        raise RecordError(f"choices must hold 2-{len(LETTERS)} texts with one label each, got {record['choices']}")
    key = str(record["answerKey"])
    if key not in labels:
        raise RecordError(f"answerKey {key!r} is not one of the choice labels {labels}")
    # Numeric labels ("1".."5") are presented as letters, as the IVON-LoRA and BLoB prompts do.
    letters = LETTERS[: len(texts)]
    choices = " ".join(f"{letter}. {text}" for letter, text in zip(letters, texts))
    return ChoiceExample(
        id=str(record.get("id", "")),
        prompt=MC_TEMPLATE.format(question=record[question_key], choices=choices),
        answers=tuple(f" {letter}" for letter in letters),
        gold=labels.index(key),
    )


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "synthetic",
            arc_example,
            splits={"train": "train", "validation": "validation", "test": "test"},
            description="Built-in offline word-category task in ARC's schema, 15% label noise.",
        ),
        Task("arc_challenge", arc_example, "allenai/ai2_arc", "ARC-Challenge",
             {"train": "train", "validation": "validation", "test": "test"}),
        Task("arc_easy", arc_example, "allenai/ai2_arc", "ARC-Easy",
             {"train": "train", "validation": "validation", "test": "test"}),
    )
}  # fmt: skip


def get_task(name: str) -> Task:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"Unknown task {name!r}.{hint} Available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def load_records(task: Task, split: str, data_files: str | None = None) -> list[dict]:
    """The raw records of `task`'s `split`: from `data_files` if given, else the generator or the Hub."""
    if split not in task.splits:
        raise ValueError(f"Task {task.name!r} has no split {split!r}; available: {', '.join(task.splits)}")
    if data_files is not None:
        import datasets

        extension = data_files.rsplit(".", 1)[-1]
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(extension)
        if builder is None:
            raise ValueError(f"Unsupported data file {data_files!r}: use .json, .jsonl, .parquet or .csv")
        return list(datasets.load_dataset(builder, data_files=data_files, split="train"))
    if task.name == "synthetic":
        return synthetic_records(task.splits[split])
    import datasets

    return list(datasets.load_dataset(task.hub_path, task.hub_config, split=task.splits[split]))


def load_examples(task_name: str, split: str, data_files: str | None = None, limit: int | None = None):
    """`ChoiceExample`s of one split; a malformed record is an error naming the task, split and row."""
    task = get_task(task_name)
    records = load_records(task, split, data_files)
    if limit is not None:
        records = records[:limit]
    examples = []
    for row, record in enumerate(records):
        try:
            examples.append(task.build_example(record))
        except (RecordError, KeyError, TypeError) as error:
            source = data_files or task.hub_path or "generator"
            raise RecordError(f"Task {task.name!r}, split {split!r} ({source}), row {row}: {error}") from error
    return examples
