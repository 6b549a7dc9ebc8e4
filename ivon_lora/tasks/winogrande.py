"""WinoGrande: sentence (with a "_" blank), option1, option2, answer "1"/"2" (empty in the Hub's test split).

The IVON-LoRA frame with the two options numbered as the dataset numbers them (as IVON-LoRA describes its prompts,
Cong et al., arXiv 2411.04421): "... Choices: 1. {option1} 2. {option2} Answer:", answers " 1" / " 2".
(Laplace-LoRA's public code letters them "A"/"B" instead; the IVON-LoRA paper's description is followed here.)

As answer texts (answer_scoring: text) the sentence's start up to the blank is the shared context and each option
followed by the rest of the sentence is scored after it: full-sentence scoring. (lm-evaluation-harness scores the
sentence's rest after each option-filled start instead, "partial scoring", whose contexts differ per option.)
"""

from __future__ import annotations

from ..choice.example import ChoiceExample
from .base import TRAIN_VALIDATION_TEST, Task, label_index, mc_example, require

OPTION_LABELS = ("1", "2")
SIZES = ("xs", "s", "m", "l", "xl", "debiased")


def winogrande_example(record: dict) -> ChoiceExample:
    require(record, "sentence", "option1", "option2")
    gold = label_index(record, "answer", OPTION_LABELS)
    options = [record["option1"], record["option2"]]
    start, blank, rest = record["sentence"].partition("_")
    if not blank or not start.strip():  # no blank to split at: the question frame's texts
        return mc_example(record["sentence"], options, gold, OPTION_LABELS)
    return mc_example(
        record["sentence"],
        options,
        gold,
        OPTION_LABELS,
        text_prompt=start,
        answer_texts=[option + rest for option in options],
    )


TASKS = tuple(
    Task(f"winogrande_{size}", winogrande_example, "allenai/winogrande", f"winogrande_{size}",
         TRAIN_VALIDATION_TEST, family="winogrande", num_choices=2, unlabelled_splits=frozenset({"test"}),
         description=f"WinoGrande ({size}) pronoun resolution, 2 options (test split unlabelled).")
    for size in SIZES
)  # fmt: skip
