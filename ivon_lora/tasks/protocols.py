"""Protocol presets: how a published table was made, so that our numbers can be set beside it honestly.

A preset fixes which questions are kept, which answers each question is scored over, the reported split, the
headline ECE bin count and how samples are averaged (README, Evaluation: tasks, protocols, reports). Prompts stay
those of the tasks. The number of samples S is not the preset's but the run's (`final_eval_samples`, 10 by default,
the S of both papers), as every evaluation resolves it (`ivon_lora.evaluation.plan`).

- ``ivon-lora`` (default): IVON-LoRA and Laplace-LoRA. ARC and OpenBookQA keep only their 4-choice questions
  (numeric labels 1-4 are presented as A-D), validation split, ECE with 10 bins, S=10 posterior samples
  averaged as probabilities.
- ``blob``: BLoB (github.com/Wang-ML-Lab/bayesian-peft). ARC is 5-way, no question dropped, validation split,
  ECE with 15 bins, S=10 samples averaged as probabilities.

Note on BLoB's 5-way ARC, read from its public code (`dataset/S2SDataset_Classification.py`,
`dataset/utils/dsets.py`, `modelwrappers/wrapperbase.py`): ARC-Easy and ARC-Challenge are declared with 5
labels, so the target tokens are the letters A-E for every question and the softmax (and the ECE, Brier and
NLL) runs over all five whatever the question's number of choices; nothing is filtered; a numeric answerKey
"1".."5" maps to index key-1, i.e. to the letter at that position. OpenBookQA is 4-way there (it always has 4
choices), MMLU 4-way. Its evaluation loader is the validation split. BLoB's own prompt ("Return the label of
the correct answer for the question below ...") is not reproduced: this preset keeps the tasks' frame, so a
question with 3 choices still lists A-C in its prompt and is scored over " A" .. " E".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from ..choice.example import ChoiceExample
from ..registry import Registry
from .base import LETTERS, RecordError, Task

# The tasks whose questions have a varying number of choices, which the 4-choice subset concerns.
CHOICE_SUBSET_FAMILIES = frozenset({"arc", "openbookqa"})
# The tasks scored over a fixed set of answer letters under `arc_answer_letters`.
FIXED_LETTER_FAMILIES = frozenset({"arc"})


@dataclass(frozen=True)
class ExampleFilter:
    """A documented filter: `name` goes into reports ("dropped 5 of 299 rows (filter: 4-choice subset)")."""

    name: str
    keep: Callable[[ChoiceExample], bool]


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    # The ECE bin count of the headline number (others may be reported beside it).
    ece_bins: int
    report_split: str = "validation"
    predictive: str = "mean of the S sample probability vectors"
    # ARC / OpenBookQA: keep only questions with this many choices (None: keep all).
    keep_num_choices: int | None = None
    # ARC: score every question over the first N letters (None: as many letters as the question has choices).
    arc_answer_letters: int | None = None
    reference: str = ""
    # Where a confidence on an ECE bin edge goes: "right", bins (lo, hi]; "left", [lo, hi) as torchmetrics
    # (ivon_lora.evaluation.metrics.BIN_EDGES).
    ece_edges: str = "right"
    # Every way this preset's numbers are made differently from its paper's (written into every report).
    deviations: tuple[str, ...] = ()

    def __post_init__(self):
        if self.ece_bins < 1:
            raise ValueError(f"Invalid ece_bins value: {self.ece_bins!r} (must be >= 1)")
        if self.keep_num_choices is not None and self.keep_num_choices < 2:
            raise ValueError(f"Invalid keep_num_choices value: {self.keep_num_choices!r} (must be >= 2)")
        if self.arc_answer_letters is not None and not 2 <= self.arc_answer_letters <= len(LETTERS):
            raise ValueError(
                f"Invalid arc_answer_letters value: {self.arc_answer_letters!r} (must be in [2, {len(LETTERS)}])"
            )
        if self.ece_edges not in ("right", "left"):
            raise ValueError(f"Invalid ece_edges value: {self.ece_edges!r} (must be right or left)")

    def filters(self, task: Task) -> tuple[ExampleFilter, ...]:
        """The filters this protocol applies to `task`'s examples (none for most tasks)."""
        if self.keep_num_choices is None or task.family not in CHOICE_SUBSET_FAMILIES:
            return ()
        num_choices = self.keep_num_choices
        return (ExampleFilter(f"{num_choices}-choice subset", lambda example: len(example.answers) == num_choices),)

    def answer_set(self, task: Task, example: ChoiceExample) -> ChoiceExample:
        """`example` with the answers this protocol scores it over (the gold index never changes)."""
        if self.arc_answer_letters is None or task.family not in FIXED_LETTER_FAMILIES:
            return example
        if len(example.answers) > self.arc_answer_letters:
            raise RecordError(
                f"{len(example.answers)} choices do not fit protocol {self.name!r}'s {self.arc_answer_letters} "
                "answer letters"
            )
        return replace(example, answers=tuple(f" {letter}" for letter in LETTERS[: self.arc_answer_letters]))

    def as_dict(self) -> dict:
        """Every field, plus the task families the filter and the fixed answer letters concern, for result files."""
        return {
            **asdict(self),
            "keep_num_choices_families": sorted(CHOICE_SUBSET_FAMILIES),
            "arc_answer_letters_families": sorted(FIXED_LETTER_FAMILIES),
        }


DEFAULT_PROTOCOL = "ivon-lora"
PROTOCOLS: Registry[Protocol] = Registry(
    "protocol",
    (
        (protocol.name, protocol)
        for protocol in (
            Protocol(
                "ivon-lora",
                "IVON-LoRA / Laplace-LoRA: ARC and OBQA restricted to 4-choice questions, validation split, "
                "ECE with 10 bins, S=10 posterior samples averaged as probabilities.",
                ece_bins=10,
                keep_num_choices=4,
                reference="Cong et al., arXiv 2411.04421 (IVON-LoRA); Yang et al., Laplace-LoRA",
                deviations=(
                    "WinoGrande options are numbered as the dataset numbers them (Choices: 1. .. 2. .., answers 1/2, "
                    "as the IVON-LoRA paper describes its prompts); Laplace-LoRA's public code letters them A/B, so "
                    "WinoGrande numbers may not be comparable with the paper's",
                    "prompts longer than max_length lose their middle (the instruction and the answer cue are kept), "
                    "which the paper's code may not do; the count of cut prompts is in each report",
                ),
            ),
            Protocol(
                "blob",
                "BLoB: every ARC question scored over the 5 letters A-E (nothing filtered), validation split, "
                "ECE with 15 bins, S=10 posterior samples averaged as probabilities.",
                ece_bins=15,
                arc_answer_letters=5,
                reference="Wang et al., BLoB (github.com/Wang-ML-Lab/bayesian-peft)",
                ece_edges="left",
                deviations=(
                    "prompts are this toolkit's IVON-LoRA frame for every task; BLoB's code builds its prompts itself, and "
                    "they are not reproduced here",
                    "prompts longer than max_length lose their middle (the instruction and the answer cue are kept), "
                    "which the paper's code may not do; the count of cut prompts is in each report",
                ),
            ),
        )
    ),
)


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)
