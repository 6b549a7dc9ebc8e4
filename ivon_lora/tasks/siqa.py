"""Social IQa (allenai/social_i_qa): context, question, answerA/B/C, label "1"/"2"/"3". No test split on the Hub.

The default branch holds only a loading script (refused by datasets >= 4): rows come from the Hub's
auto-converted parquet branch (config "default"). The question is "{context} {question}", lettered choices.
"""

from __future__ import annotations

from ..choice.example import ChoiceExample
from .base import Task, label_index, mc_example, require


def siqa_example(record: dict) -> ChoiceExample:
    require(record, "context", "question", "answerA", "answerB", "answerC")
    texts = [record["answerA"], record["answerB"], record["answerC"]]
    gold = label_index(record, "label", ("1", "2", "3"))
    return mc_example(f"{record['context']} {record['question']}", texts, gold)


TASKS = (
    Task("siqa", siqa_example, "allenai/social_i_qa", "default", family="siqa", num_choices=3, hub_revision="refs/convert/parquet",
         description="Social IQa: social-situation commonsense questions, 3 choices."),
)  # fmt: skip
