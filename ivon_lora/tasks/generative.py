"""Generative tasks: a question, free-form reference answers, and the judge that decides whether an answer is right.

A `GenerativeTask` is data like a multiple-choice `Task` (where its records live, its splits, how a record
becomes an example) plus how its answers are generated and judged: the correctness judge, the judges whose
scores each example reports, the decoding budget and the stop strings. Every record must carry at least one
reference answer, in every split: an example without one could not be judged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from .base import GENERATIVE, RecordError, RecordSource, require, require_text
from .judges import JUDGES, Judge

QA_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class GenerativeExample:
    """One question to answer freely: the prompt, the question alone, and its reference answers.

    `target` is the completion a finetune learns from this example (a QA task's first reference answer,
    GSM8K's worked solution ending in "#### N"), kept apart from the references the judge compares with.
    """

    id: str
    prompt: str
    question: str
    references: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class GenerativeTask(RecordSource):
    """One generative task as data (see the module doc): a `RecordSource` whose `build_example` makes
    `GenerativeExample`s, with its judges and decoding settings."""

    build_example: Callable[[dict], GenerativeExample]
    # Decides correctness (score 1) and which generated answers mean the same (semantic agreement, entropy).
    judge: Judge = JUDGES["exact_match"]
    # Every judge whose score the per-example report shows, the correctness judge among them.
    report_judges: tuple[Judge, ...] = (JUDGES["exact_match"], JUDGES["token_f1"])
    # Decoding: the most new tokens, and the strings that end an answer (cut off, not part of it).
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    kind: ClassVar[str] = GENERATIVE

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"Invalid max_new_tokens value: {self.max_new_tokens!r} (must be >= 1)")
        if self.judge not in self.report_judges:
            raise ValueError(f"Task {self.name!r}: its judge {self.judge.name!r} must be one of its report_judges")

    def as_dict(self) -> dict:
        return {
            **super().as_dict(),
            "judge": self.judge.name,
            "report_judges": [judge.name for judge in self.report_judges],
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
        }


def as_question(text: str) -> str:
    """The question as asked: stripped, ending in "?" (NQ-open's questions have none)."""
    text = text.strip()
    return text if text.endswith("?") else text + "?"


def reference_list(value, key: str) -> tuple[str, ...]:
    """`value` as a tuple of distinct non-empty reference strings (first occurrence order); errors name `key`."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise RecordError(f"Invalid {key} value: {value!r} (must be a list of answer strings)")
    if not all(isinstance(answer, str) for answer in value):
        raise RecordError(f"Invalid {key} value: {value!r} (must be a list of answer strings)")
    references = tuple(dict.fromkeys(answer.strip() for answer in value if answer.strip()))
    if not references:
        raise RecordError(f"{key} holds no reference answer: every example needs at least one")
    return references


def qa_example(record: dict, answers_key: str = "answer") -> GenerativeExample:
    """A short-answer question: `question` and a list of answer strings under `answers_key` (NQ-open's schema)."""
    require(record, "question")
    references = reference_list(record.get(answers_key), answers_key)
    return open_qa_example(record["question"], references)


def open_qa_example(question: str, references: tuple[str, ...]) -> GenerativeExample:
    """The shared short-answer frame: "Question: ...?\\nAnswer:", learning target the first reference."""
    require_text(question, "question")
    question = as_question(question)
    return GenerativeExample(id="", prompt=QA_TEMPLATE.format(question=question), question=question,
                             references=references, target=" " + references[0])  # fmt: skip
