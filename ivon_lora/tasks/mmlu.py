"""MMLU subjects as out-of-distribution evaluation sets (cais/mmlu, one config per subject).

Schema: question, subject, choices[4], answer (int 0-3). A subject is named `mmlu_<subject>` or
`mmlu:<subject>` (e.g. mmlu_college_chemistry); `mmlu_all` is every subject at once. The Hub's subject configs
have the splits test, validation and dev (5 rows, the few-shot examples) and no train split; "auxiliary_train"
exists only in config "all" and is not offered here.
"""

from __future__ import annotations

from functools import cache, partial

from ..choice.example import ChoiceExample
from ..registry import unknown_name
from .base import RecordError, Task, label_index, mc_example, require

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios",
    "nutrition", "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    "virology", "world_religions",
)  # fmt: skip
MMLU_CONFIGS = (*MMLU_SUBJECTS, "all")
MMLU_SPLITS = {"test": "test", "validation": "validation", "dev": "dev"}
NAME_PREFIXES = ("mmlu:", "mmlu_")


def mmlu_example(record: dict, subject: str = "all") -> ChoiceExample:
    require(record, "question", "choices")
    if subject != "all" and record.get("subject") not in (None, "", subject):
        raise RecordError(f"subject {record['subject']!r} is not the task's subject {subject!r}")
    choices = record["choices"]
    if not isinstance(choices, (list, tuple)):
        raise RecordError(f"Invalid choices value: {choices!r} (must be a list of texts)")
    labels = [str(index) for index in range(len(choices))]
    return mc_example(record["question"], choices, label_index(record, "answer", labels))


def mmlu_subject(name: str) -> str | None:
    """The subject of an MMLU task name ("mmlu_anatomy" or "mmlu:anatomy" -> "anatomy"); None if not MMLU."""
    for prefix in NAME_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


@cache
def mmlu_task(subject: str) -> Task:
    """The task of one MMLU subject (or "all"); a misspelt subject gets a did-you-mean error."""
    if subject not in MMLU_CONFIGS:
        raise unknown_name("MMLU subject", subject, MMLU_CONFIGS)
    return Task(
        f"mmlu_{subject}", partial(mmlu_example, subject=subject), "cais/mmlu", subject, MMLU_SPLITS, family="mmlu",
        num_choices=4,
        description=f"MMLU {subject.replace('_', ' ')}: 4-choice exam questions (OOD evaluation; no train split).",
    )  # fmt: skip
