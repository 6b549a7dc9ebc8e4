"""ARC (Challenge, Easy) and OpenBookQA: question, choices{text[], label[]}, answerKey.

ARC's labels are usually "A".."E" but sometimes "1".."5", and questions have 3 to 5 choices; OpenBookQA always
has 4 lettered choices. The choices are presented with letters whatever the record's labels are, as the
IVON-LoRA protocol does (numeric labels 1-4 map to A-D). Which questions are kept (the 4-choice subset) and
how many answer letters a question is scored over (BLoB's 5-way ARC) is the protocol's business
(see `protocols.py`), not the prompt's.
"""

from __future__ import annotations

from functools import partial

from ..choice.example import ChoiceExample
from .base import (
    LETTERS,
    TRAIN_VALIDATION_TEST,
    RecordError,
    Task,
    label_index,
    mc_example,
    require,
)


def arc_example(record: dict, question_key: str = "question") -> ChoiceExample:
    """ARC / OpenBookQA / CommonsenseQA schema; an empty answerKey gives gold -1 (unlabelled)."""
    require(record, question_key, "choices")
    texts, labels = record["choices"]["text"], [str(label) for label in record["choices"]["label"]]
    if len(texts) != len(labels) or not 2 <= len(texts) <= len(LETTERS):
        raise RecordError(
            f"Invalid choices value: {record['choices']} (must hold 2-{len(LETTERS)} texts with one label each)"
        )
    return mc_example(record[question_key], texts, label_index(record, "answerKey", labels))


TASKS = (
    Task("arc_challenge", arc_example, "allenai/ai2_arc", "ARC-Challenge", TRAIN_VALIDATION_TEST, family="arc",
         id_field="id", description="ARC-Challenge grade-school science questions (3-5 choices; protocol filters)."),
    Task("arc_easy", arc_example, "allenai/ai2_arc", "ARC-Easy", TRAIN_VALIDATION_TEST, family="arc",
         id_field="id", description="ARC-Easy grade-school science questions (3-5 choices; protocol filters)."),
    Task("openbookqa", partial(arc_example, question_key="question_stem"), "allenai/openbookqa", "main",
         TRAIN_VALIDATION_TEST, family="openbookqa", id_field="id",
         description="OpenBookQA elementary science questions (question_stem, 4 choices)."),
)  # fmt: skip
