"""A second deterministic offline task of real English words, in another skill than wordfacts: antonyms.

Each statement asks whether two common words are opposites ("is hot the opposite of cold"). The false ones pair
the word with a near-synonym ("is hot the opposite of warm"), never with an unrelated word, so relatedness alone
does not answer it and category knowledge (what wordfacts teaches) does not help: the model must tell an opposite
from a synonym. BoolQ schema (question, passage, answer) and wordfacts' short True/False prompt, so both tasks
score the same answers (" False" / " True") and an adapter of one can be evaluated on the other. Half of the
statements are true; the labels are clean in every split (wordfacts keeps the label noise).

`wordfacts_antonyms` is the union of both tasks' records, each split shuffled together: the multitask reference
that merging two single-task adapters previews (equal weights: both train splits have 256 questions).

Why this task: SmolLM2-135M-Instruct answers it near chance zero-shot (0.55 validation accuracy), a wordfacts adapter
does not lift it (0.53), and LoRA learns it within 200 CPU steps (0.99, the IVON recipe; the README's merging study).
"""

from __future__ import annotations

import random

from .base import TRAIN_VALIDATION_TEST, Task, split_random
from .wordfacts import wordfacts_example, wordfacts_records

# word, its antonym, a near-synonym of the word (the false statements' partner).
TRIPLES: tuple[tuple[str, str, str], ...] = (
    ("hot", "cold", "warm"), ("big", "small", "large"), ("fast", "slow", "quick"), ("happy", "sad", "glad"),
    ("tall", "short", "high"), ("old", "young", "aged"), ("rich", "poor", "wealthy"), ("hard", "soft", "firm"),
    ("light", "dark", "bright"), ("early", "late", "prompt"), ("strong", "weak", "powerful"),
    ("full", "empty", "filled"), ("wet", "dry", "damp"), ("loud", "quiet", "noisy"), ("clean", "dirty", "tidy"),
    ("thick", "thin", "dense"), ("wide", "narrow", "broad"), ("deep", "shallow", "profound"),
    ("heavy", "light", "weighty"), ("open", "closed", "unlocked"), ("brave", "cowardly", "bold"),
    ("cheap", "expensive", "inexpensive"), ("kind", "cruel", "gentle"), ("true", "false", "correct"),
    ("safe", "dangerous", "secure"), ("begin", "end", "start"), ("buy", "sell", "purchase"),
    ("win", "lose", "triumph"), ("love", "hate", "adore"), ("push", "pull", "shove"), ("give", "take", "donate"),
    ("arrive", "leave", "come"), ("laugh", "cry", "giggle"), ("remember", "forget", "recall"),
    ("accept", "refuse", "approve"), ("increase", "decrease", "raise"), ("above", "below", "over"),
    ("inside", "outside", "within"), ("day", "night", "daytime"), ("friend", "enemy", "ally"),
    ("victory", "defeat", "triumph"), ("success", "failure", "achievement"), ("question", "answer", "query"),
    ("beginning", "ending", "start"), ("entrance", "exit", "doorway"), ("ancient", "modern", "old"),
    ("sharp", "dull", "keen"), ("smooth", "rough", "sleek"), ("sweet", "sour", "sugary"),
    ("polite", "rude", "courteous"), ("generous", "selfish", "giving"), ("calm", "angry", "peaceful"),
    ("simple", "complex", "easy"), ("guilty", "innocent", "culpable"), ("awake", "asleep", "alert"),
    ("alive", "dead", "living"), ("near", "far", "close"), ("first", "last", "initial"),
    ("always", "never", "forever"), ("maximum", "minimum", "most"),
)  # fmt: skip
TEMPLATES = (
    "is {word} the opposite of {other}",
    "does {word} mean the opposite of {other}",
    "are {word} and {other} opposites",
)
SPLIT_SIZES = {"train": 256, "validation": 200, "test": 300}


def antonyms_records(
    split: str, num_examples: int | None = None, seed: int = 0, label_noise: float = 0.0
) -> list[dict]:
    """The `split` as BoolQ-schema records (id, question, passage, answer): half opposites, half near-synonyms."""
    rng = split_random("antonyms", split, SPLIT_SIZES, seed, label_noise)
    records = []
    for index in range(SPLIT_SIZES[split] if num_examples is None else num_examples):
        word, antonym, synonym = rng.choice(TRIPLES)
        true = rng.random() < 0.5
        other = antonym if true else synonym
        if rng.random() < 0.5:  # either order: being opposites is symmetric
            word, other = other, word
        template = rng.choice(TEMPLATES)
        flip = rng.random() < label_noise
        records.append({
            "id": f"antonyms-{split}-{index}",
            "question": template.format(word=word, other=other),
            "passage": "Opposites (antonyms) are words with contrary meanings.",
            "answer": true != (flip and split == "train"),
        })  # fmt: skip
    return records


def wordfacts_antonyms_records(split: str, num_examples: int | None = None, seed: int = 0, label_noise: float | None = None) -> list[dict]:  # fmt: skip
    """Both tasks' records of `split` (wordfacts with its own label noise unless given), shuffled together."""
    noise = {} if label_noise is None else {"label_noise": label_noise}
    records = wordfacts_records(split, seed=seed, **noise) + antonyms_records(split, seed=seed)
    random.Random(seed + 7).shuffle(records)
    return records if num_examples is None else records[:num_examples]


TASKS = (
    Task("antonyms", wordfacts_example, splits=TRAIN_VALIDATION_TEST,
         family="boolq", id_field="id", generator=antonyms_records, sizable=True,
         description="Built-in offline true/false statements on whether two English words are opposites (false ones "
                     "pair a near-synonym), BoolQ schema, 256 clean train questions; for real pretrained models."),
    Task("wordfacts_antonyms", wordfacts_example, splits=TRAIN_VALIDATION_TEST,
         family="boolq", id_field="id", generator=wordfacts_antonyms_records,
         description="The union of wordfacts and antonyms (each split of both, shuffled together): the multitask "
                     "reference of merging their adapters."),
)  # fmt: skip
