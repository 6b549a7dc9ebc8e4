"""A deterministic synthetic multiple-choice task in ARC's record schema, for the offline demo and the tests.

Each question asks which category a word belongs to; the four categories are always offered in the same order,
so a tiny randomly initialised model can learn the word -> category facts through LoRA in a few hundred steps.
Two distractor words make every question unique, and a fraction of the gold labels is replaced by a random
wrong one in every split, so the best achievable accuracy is about 1 - label_noise and a model that memorises
the noise is visibly overconfident.
"""

from __future__ import annotations

from .arc import arc_example
from .base import TRAIN_VALIDATION_TEST, Task, split_random

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animal": ("dog", "cat", "horse", "tiger", "rabbit", "mouse", "sheep", "goat", "wolf", "bear"),
    "color": ("red", "blue", "green", "yellow", "purple", "black", "white", "brown", "pink", "gray"),
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon"),
    "vehicle": ("car", "bus", "train", "truck", "boat", "plane", "bike", "ship", "tram", "van"),
}
DISTRACTORS = (
    "hammer", "saw", "drill", "wrench", "spade", "axe", "chisel", "pliers", "rake", "piano",
    "violin", "drum", "flute", "guitar", "harp", "trumpet", "cello", "oboe", "banjo", "lamp",
)  # fmt: skip
QUESTION_TEMPLATES = (
    "Which category does the word {word} belong to? It was listed next to {d1} and {d2}.",
    "Next to {d1} and {d2} we found {word}. What kind of thing is {word}?",
    "What is {word}, if {d1} and {d2} are not part of the question?",
)
LABELS = ("A", "B", "C", "D")
SPLIT_SIZES = {"train": 4000, "validation": 500, "test": 1000}


def synthetic_records(split: str, num_examples: int | None = None, seed: int = 0, label_noise: float = 0.15):
    """The `split` of the synthetic task as a list of ARC-schema records (id, question, choices, answerKey)."""
    rng = split_random("synthetic", split, SPLIT_SIZES, seed, label_noise)
    categories = list(CATEGORIES)
    records = []
    for index in range(SPLIT_SIZES[split] if num_examples is None else num_examples):
        gold = rng.randrange(len(categories))
        word = rng.choice(CATEGORIES[categories[gold]])
        first, second = rng.sample(DISTRACTORS, 2)
        question = rng.choice(QUESTION_TEMPLATES).format(word=word, d1=first, d2=second)
        # Both draws happen whatever the noise level, so the questions do not depend on it.
        flip, wrong = rng.random() < label_noise, rng.choice([i for i in range(len(categories)) if i != gold])
        if flip:
            gold = wrong
        records.append(
            {
                "id": f"synthetic-{split}-{index}",
                "question": question,
                "choices": {"text": categories, "label": list(LABELS)},
                "answerKey": LABELS[gold],
            }
        )
    return records


TASKS = (
    Task("synthetic", arc_example, splits=TRAIN_VALIDATION_TEST, family="synthetic", id_field="id",
         generator=synthetic_records, sizable=True,
         description="Built-in offline word-category task in ARC's schema, 15% label noise."),
)  # fmt: skip


def tokenizer_corpus() -> list[str]:
    """Text the built-in tokenizers are trained on: the prompt frames and every word of the task."""
    words = " ".join([w for ws in CATEGORIES.values() for w in ws] + list(DISTRACTORS) + list(CATEGORIES))
    frames = [template.format(word="word", d1="one", d2="two") for template in QUESTION_TEMPLATES]
    frames += [
        "Select one of the choices that answers the following question: Choices: A. B. C. D. E. Answer: A B C D E",
        "Answer the question with only True or False: Context: Answer: True False 1 2",
    ]
    return frames * 20 + [words] * 20
