"""CommonsenseQA (tau/commonsense_qa): question, choices{label[] A-E, text[]}, answerKey (empty in test).

ARC's schema and frame (`arc_example`), always 5 choices; no protocol filter applies to it.
"""

from __future__ import annotations

from .arc import arc_example
from .base import TRAIN_VALIDATION_TEST, Task

TASKS = (
    Task("commonsense_qa", arc_example, "tau/commonsense_qa", None, TRAIN_VALIDATION_TEST, family="commonsense_qa", num_choices=5,
         unlabelled_splits=frozenset({"test"}), id_field="id",
         description="CommonsenseQA: ConceptNet-based questions, 5 choices (test split unlabelled)."),
)  # fmt: skip
