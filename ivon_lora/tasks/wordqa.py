"""A deterministic offline open-ended task: one-word questions about the kind of thing an English word names.

"What kind of thing is a mango? Answer with one word." -> "fruit". The words and categories are wordfacts'
(`CATEGORIES`); each word is asked once, and the splits are split by word (no word is in two splits), so
validation and test measure whether a finetune generalises to words it never saw, not whether it memorised them.
A word listed in several categories (orange: fruit and color) accepts every one of them; the first, in
`CATEGORIES` order, is the reference answer that SFT trains on.

Records {"id", "question", "answers"}: `ivon_lora.sft.data` turns them into chat rows for SFT (builtin:wordqa),
and the generative task `wordqa` (`TASKS`) scores free-form answers against every accepted category by normalised
exact match, with the plain prompt "Question: <question>\nAnswer:" (a chat run reads the question alone as the
user message), stopping at the first newline after a few tokens (the answer is one word).
"""

from __future__ import annotations

import random

from .base import TRAIN_VALIDATION_TEST, require, require_text, split_random
from .generative import QA_TEMPLATE, GenerativeExample, GenerativeTask, reference_list
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


def wordqa_example(record: dict) -> GenerativeExample:
    """A record as a generative example: the question as asked (it ends in its own instruction, so no "?" is
    added), every accepted category a reference, the first one the learning target."""
    require(record, "question")
    require_text(record["question"], "question")
    references = reference_list(record.get("answers"), "answers")
    question = record["question"].strip()
    return GenerativeExample(id="", prompt=QA_TEMPLATE.format(question=question), question=question,
                             references=references, target=" " + references[0])  # fmt: skip


TASKS = (
    GenerativeTask("wordqa", wordqa_example, splits=TRAIN_VALIDATION_TEST, id_field="id", generator=wordqa_records,
                   max_new_tokens=8, stop=("\n",),
                   description="Built-in offline one-word questions about the kind of thing an English word names, "
                               "split by word; judged by exact match with any accepted category."),
)  # fmt: skip
