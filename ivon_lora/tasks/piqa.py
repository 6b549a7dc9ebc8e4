"""PIQA: goal, sol1, sol2, label 0/1 (-1 in the Hub's test split).

ybisk/piqa's default branch holds only a loading script, which datasets >= 4 refuses to run; its rows are
read from the Hub's auto-converted parquet branch (config "default"). Presented in the shared lettered frame.
"""

from __future__ import annotations

from ..choice.example import ChoiceExample
from .base import TRAIN_VALIDATION_TEST, Task, label_index, mc_example, require


def piqa_example(record: dict) -> ChoiceExample:
    require(record, "goal", "sol1", "sol2")
    return mc_example(record["goal"], [record["sol1"], record["sol2"]], label_index(record, "label", ("0", "1")))


TASKS = (
    Task("piqa", piqa_example, "ybisk/piqa", "default", TRAIN_VALIDATION_TEST, family="piqa", num_choices=2,
         unlabelled_splits=frozenset({"test"}), hub_revision="refs/convert/parquet",
         description="PIQA physical commonsense: pick the better of 2 solutions (test split unlabelled)."),
)  # fmt: skip
