"""What every task module shares: the `Task` record, the multiple-choice frame, record validation (errors: `ivon_lora.errors`).

Tasks come in two kinds, each task's `kind`: multiple-choice `Task`s (answers scored as K choices) and
`GenerativeTask`s (`generative.py`: free-form answers judged against references). Commands dispatch on `kind`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import ClassVar

from ..choice.example import ChoiceExample
from ..errors import RecordError

LETTERS = "ABCDEFGH"
MC_TEMPLATE = "Select one of the choices that answers the following question: {question} Choices: {choices} Answer:"
# The question as answer texts scored by likelihood (answer_scoring: text), lm-evaluation-harness's ARC/MMLU frame:
# the choices are not listed, each " {text}" follows "Answer:".
TEXT_TEMPLATE = "Question: {question}\nAnswer:"
TRAIN_VALIDATION = {"train": "train", "validation": "validation"}
TRAIN_VALIDATION_TEST = {"train": "train", "validation": "validation", "test": "test"}
# Generated tasks: distinct random streams per split, so that the splits never share a generator state.
_SPLIT_STREAM_OFFSETS = {"train": 0, "validation": 1_000_003, "test": 2_000_003}
# The two kinds of task (`Task.kind`, `GenerativeTask.kind`).
MULTIPLE_CHOICE = "multiple_choice"
GENERATIVE = "generative"


@dataclass(frozen=True)
class RecordSource:
    """What tasks of either kind share: where the records live, which splits exist, how a record becomes an example.

    `build_example` turns one raw record into an example with an empty id (the loader assigns ids).
    """

    name: str
    build_example: Callable[[dict], object]
    hub_path: str | None = None
    hub_config: str | None = None
    # Our split name -> the Hub's split name.
    splits: Mapping[str, str] = field(default_factory=lambda: dict(TRAIN_VALIDATION))
    version: int = 1
    description: str = ""
    # The record field holding a stable, split-unique id; without one, ids are f"{split}-{row}".
    id_field: str | None = None
    # A Hub revision, for datasets whose default branch only holds a loading script (datasets >= 4 refuses
    # scripts; the Hub's auto-converted parquet branch holds the same rows).
    hub_revision: str | None = None
    # Records made by code instead of loaded (the synthetic task): split name -> records.
    generator: Callable[[str], list[dict]] | None = None
    # Whether `generator(split, num_examples)` makes a split of any size (the first records the same whatever the size),
    # so that `with_test_size` applies; and the test split's size when it was set (None: the generator's own).
    sizable: bool = False
    test_size: int | None = None

    def source(self, data_files=None) -> str:
        """Where this task's records come from, for messages and reports."""
        if data_files is not None:
            return str(data_files)
        if self.generator is not None:
            return "generator"
        where = ":".join(part for part in (self.hub_path, self.hub_config) if part)
        return f"{where}@{self.hub_revision}" if self.hub_revision else where

    def as_dict(self) -> dict:
        """The identity of the task for result files (what the numbers were computed on)."""
        identity = {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "hub_path": self.hub_path,
            "hub_config": self.hub_config,
            "hub_revision": self.hub_revision,
        }
        return identity if self.test_size is None else {**identity, "test_size": self.test_size}


@dataclass(frozen=True)
class Task(RecordSource):
    """One multiple-choice task as data: a `RecordSource` whose `build_example` makes `ChoiceExample`s.

    `build_example` gives gold -1 where the record carries no label. `unlabelled_splits` names the splits whose
    Hub rows have an empty label (e.g. WinoGrande's test split); anywhere else a missing label is an error.
    `family` groups the tasks that a protocol preset treats alike (e.g. "arc": the answer letters of the BLoB
    protocol).
    """

    build_example: Callable[[dict], ChoiceExample]
    family: str = ""
    unlabelled_splits: frozenset[str] = frozenset()
    # Choices every record must have (None: any number): a 2-choice row in a 4-choice task is an error, not a
    # question scored 2-way under the task's name.
    num_choices: int | None = None
    kind: ClassVar[str] = MULTIPLE_CHOICE


TEST_SIZE_OPTION = "test_size"


def with_test_size(task: RecordSource, value: str) -> RecordSource:
    """`task` with a test split of `value` records, named `NAME:test_size=N` (so that every report records it): a
    generated task whose generator makes splits of any size (its first records are the default split's). A KeyError
    (the registry's lookup error) for a task whose splits are fixed or a size that is not a positive integer."""
    if not task.sizable or task.test_size is not None:
        raise KeyError(f"Task {task.name!r} takes no {TEST_SIZE_OPTION}: only generated tasks whose generator makes "
                       "splits of any size do (synthetic, wordfacts, wordfacts_clean, antonyms, wordpick)")  # fmt: skip
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1 or str(size) != value.strip():
        raise KeyError(f"{task.name}:{TEST_SIZE_OPTION}={value}: Invalid {TEST_SIZE_OPTION} value: {value!r} (must be "
                       "a positive integer)")  # fmt: skip
    return replace(task, name=f"{task.name}:{TEST_SIZE_OPTION}={size}", test_size=size,
                   generator=partial(_test_split_of_size, task.generator, size),
                   description=f"{task.description} Test split of {size} records.")  # fmt: skip


def _test_split_of_size(generator: Callable, size: int, split: str) -> list[dict]:
    return generator(split, size) if split == "test" else generator(split)


def require(record: dict, *keys: str) -> None:
    """Raise a `RecordError` naming every key of `keys` that is absent or empty in `record`."""
    missing = [key for key in keys if record.get(key) in (None, "")]
    if missing:
        raise RecordError(f"missing field(s) {missing}")


def require_text(value, what: str) -> None:
    """A field that becomes prompt text must be a non-empty string (None would be spelled "None" in the prompt)."""
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"Invalid {what} value: {value!r} (must be a non-empty text)")


def label_index(record: dict, key: str, labels: Sequence[str]) -> int:
    """The index of `record[key]` among `labels` (compared as strings, so 2 and "2" agree); -1 if unlabelled.

    An absent key, None, "" or -1 means "no label" (the Hub's test splits); the loader decides whether the
    split may be unlabelled. Anything else that is not one of `labels` is an error, booleans included.
    """
    value = record.get(key)
    if value is None or value == "" or (value == -1 and not isinstance(value, bool)):
        return -1
    if isinstance(value, bool) or str(value) not in labels:
        raise RecordError(f"{key} {value!r} is not one of the labels {list(labels)}")
    return list(labels).index(str(value))


def mc_example(
    question: str,
    texts: Sequence[str],
    gold: int,
    labels: Sequence[str] = LETTERS,
    text_prompt: str | None = None,
    answer_texts: Sequence[str] | None = None,
) -> ChoiceExample:
    """The shared multiple-choice frame: "... {question} Choices: A. t1 B. t2 ... Answer:", answers " A", " B", ...

    `labels` are what the choices are called in the prompt and what the answers are (letters, or "1"/"2"). The
    text form (answer_scoring: text) is `text_prompt` (default `TEXT_TEMPLATE`) followed by `answer_texts`
    (default " t1", " t2", ...).
    """
    if not isinstance(texts, (list, tuple)) or not 2 <= len(texts) <= len(labels):
        raise RecordError(f"Invalid choices value: {texts!r} (must be a list of 2-{len(labels)} choices)")
    require_text(question, "question")
    for label, text in zip(labels, texts):
        require_text(text, f"choice {label}")
    used = labels[: len(texts)]
    choices = " ".join(f"{label}. {text}" for label, text in zip(used, texts))
    return ChoiceExample(
        id="",
        prompt=MC_TEMPLATE.format(question=question, choices=choices),
        answers=tuple(f" {label}" for label in used),
        gold=gold,
        text_prompt=TEXT_TEMPLATE.format(question=question) if text_prompt is None else text_prompt,
        texts=tuple(f" {text}" for text in texts) if answer_texts is None else tuple(answer_texts),
    )


def split_random(task: str, split: str, split_sizes: Mapping[str, int], seed: int, label_noise: float) -> random.Random:
    """The random stream of a generated task's `split`, after checking the split and the label-noise level."""
    if split not in split_sizes:
        raise ValueError(f"Unknown {task} split {split!r}; available: {', '.join(split_sizes)}")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"Invalid label_noise value: {label_noise} (must be in [0, 1))")
    return random.Random(seed + _SPLIT_STREAM_OFFSETS[split])
