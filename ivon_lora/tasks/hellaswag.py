"""HellaSwag (Rowan/hellaswag): activity_label, ctx, endings[4], label "0".."3" (empty in the Hub's test split).

The question is "{activity_label}: {ctx}" and the endings are the lettered choices. WikiHow rows carry markup
("[title]", "[step]", ...), removed as lm-evaluation-harness does so the prompt reads as text. Ids are
f"{split}-{row}" (the `ind` field is an index into the source corpus, not a documented id).
"""

from __future__ import annotations

import re

from ..choice.example import ChoiceExample
from .base import (
    TRAIN_VALIDATION_TEST,
    RecordError,
    Task,
    label_index,
    mc_example,
    require,
)

ENDING_LABELS = ("0", "1", "2", "3")


def clean_text(text: str) -> str:
    """HellaSwag's WikiHow markup removed: " [title]" becomes ". ", other "[...]" tags vanish."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag_example(record: dict) -> ChoiceExample:
    require(record, "activity_label", "ctx", "endings")
    question = clean_text(f"{record['activity_label']}: {record['ctx']}")
    endings = record["endings"]
    if not isinstance(endings, (list, tuple)) or not all(isinstance(ending, str) for ending in endings):
        raise RecordError(f"Invalid endings value: {endings!r} (must be a list of strings)")
    texts = [clean_text(ending) for ending in endings]
    return mc_example(question, texts, label_index(record, "label", ENDING_LABELS[: len(texts)]))


TASKS = (
    Task("hellaswag", hellaswag_example, "Rowan/hellaswag", None, TRAIN_VALIDATION_TEST, family="hellaswag", num_choices=4,
         unlabelled_splits=frozenset({"test"}),
         description="HellaSwag: pick the most plausible of 4 endings (test split unlabelled)."),
)  # fmt: skip
