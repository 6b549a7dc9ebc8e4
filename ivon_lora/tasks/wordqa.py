"""A deterministic offline open-ended task: one-word questions about the kind of thing an English word names.

"What kind of thing is a mango? Answer with one word." -> "fruit". The words and categories are wordfacts'
(`CATEGORIES`); each word is asked once, and the splits are split by word (no word is in two splits), so
validation and test measure whether a finetune generalises to words it never saw, not whether it memorised them.
A word listed in several categories (orange: fruit and color) accepts every one of them; the first, in
`CATEGORIES` order, is the reference answer that SFT trains on.

Plain data, no prompt format: records {"id", "question", "answers"}; `ivon_lora.sft.data` turns them into chat
rows for SFT (builtin:wordqa), and a generative evaluation can score free-form answers against `answers`.
"""

from __future__ import annotations

import random

from .base import split_random
from .wordfacts import CATEGORIES, _article

# 249 distinct words: about 60/20/20, all of them used.
SPLIT_SIZES = {"train": 149, "validation": 50, "test": 50}
# Short on purpose: the demo trains a 135M model on 2 CPU cores, where a step costs about its prompt length.
TEMPLATES = (
    "What kind of thing {be} {subject}? Answer with one word.",
    "{Subject} {be} a kind of what? Answer with one word.",
)
# Words that take no article and a plural verb ("What kind of thing are scissors?").
PLURAL_WORDS = frozenset({"scissors", "pliers", "trousers", "jeans", "shorts", "pajamas", "bagpipes"})


def word_categories() -> dict[str, tuple[str, ...]]:
    """Every word of `CATEGORIES` -> the categories that list it, in `CATEGORIES` order."""
    categories: dict[str, list[str]] = {}
    for category, (_, words) in CATEGORIES.items():
        for word in words:
            categories.setdefault(word, []).append(category)
    return {word: tuple(names) for word, names in categories.items()}


def split_words(seed: int = 0) -> dict[str, list[str]]:
    """The words of each split: one shuffle of all the words (the same for every split), cut by `SPLIT_SIZES`."""
    words = sorted(word_categories())
    if len(words) != sum(SPLIT_SIZES.values()):
        raise AssertionError(f"SPLIT_SIZES cover {sum(SPLIT_SIZES.values())} words, CATEGORIES has {len(words)}")
    random.Random(seed).shuffle(words)
    splits, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        splits[split] = words[start : start + size]
        start += size
    return splits


def wordqa_records(split: str, seed: int = 0) -> list[dict]:
    """The `split` as records {"id", "question", "answers"}: one question per word of the split."""
    rng = split_random("wordqa", split, SPLIT_SIZES, seed, label_noise=0.0)  # this split's templates
    categories = word_categories()
    records = []
    for index, word in enumerate(split_words(seed)[split]):
        plural = word in PLURAL_WORDS
        subject = word if plural else " ".join(f"{_article(word)} {word}".split())
        question = rng.choice(TEMPLATES).format(be="are" if plural else "is", subject=subject,
                                                Subject=subject[:1].upper() + subject[1:])  # fmt: skip
        records.append({"id": f"wordqa-{split}-{index}", "question": question, "answers": list(categories[word])})
    return records
