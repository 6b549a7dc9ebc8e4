"""BoolQ (google/boolq): question, passage, answer (bool). No test split on the Hub.

Prompt as in IVON-LoRA / Laplace-LoRA (Cong et al., arXiv 2411.04421; Yang et al., Laplace-LoRA); the answers are
" False" / " True", gold = int(answer).
"""

from __future__ import annotations

from ..choice.example import ChoiceExample
from .base import RecordError, Task, require

BOOLQ_TEMPLATE = "Answer the question with only True or False: {question} Context: {passage}"
ANSWERS = (" False", " True")


def boolq_example(record: dict) -> ChoiceExample:
    require(record, "question", "passage")
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, bool):
        raise RecordError(f"Invalid answer value: {answer!r} (must be a boolean, true or false)")
    return ChoiceExample(
        id="",
        prompt=BOOLQ_TEMPLATE.format(question=record["question"], passage=record["passage"]),
        answers=ANSWERS,
        gold=-1 if answer is None else int(answer),
    )


TASKS = (
    Task("boolq", boolq_example, "google/boolq", family="boolq",
         description="BoolQ yes/no questions about a Wikipedia passage, answered True/False."),
)  # fmt: skip
