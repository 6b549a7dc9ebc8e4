"""A deterministic offline 4-way task of real English words, for the text-likelihood scoring: pick the word that
belongs to a category ("Which word names a kind of fruit?" mango / hammer / violin / France).

Records are in ARC's schema (question, choices, answerKey), so the task has both forms: the letter frame of the
other multiple-choice tasks ("... Choices: A. mango B. hammer ... Answer:", answers " A" .. " D") and the text
form (answer_scoring: text / text_norm): "Question: Which word names a kind of fruit?\\nAnswer:" followed by each
word, " mango", " hammer", ..., scored by its log-likelihood (lm-evaluation-harness's ARC frame). The words and
categories are wordfacts' (`wordfacts.CATEGORIES`); the three distractors come from three other categories and
are never members of the asked one (orange is a fruit and a color). The gold position is uniform. As in
wordfacts, the train split is small (256) and a fraction of its labels (15%) is moved to a wrong word; validation
and test are clean.

Why this task: a 135M model does not learn to bind answers to letters in a few hundred steps, but it scores words
by likelihood: SmolLM2-135M-Instruct starts above chance zero-shot under the text scoring (README, "Answer texts
scored by likelihood").
"""

from __future__ import annotations

from .arc import arc_example
from .base import LETTERS, TRAIN_VALIDATION_TEST, Task, split_random
from .wordfacts import CATEGORIES

TEMPLATES = (
    "Which word names a kind of {category}?",
    "Which of these words is a kind of {category}?",
    "Which word belongs to the category {category}?",
)
SPLIT_SIZES = {"train": 256, "validation": 200, "test": 300}
LABEL_NOISE = 0.15  # train split only
NUM_CHOICES = 4


def wordpick_records(split: str, num_examples: int | None = None, seed: int = 0,
                     label_noise: float = LABEL_NOISE) -> list[dict]:  # fmt: skip
    """The `split` as ARC-schema records (id, question, choices, answerKey); labels moved in train only."""
    rng = split_random("wordpick", split, SPLIT_SIZES, seed, label_noise)
    names = list(CATEGORIES)
    records = []
    for index in range(SPLIT_SIZES[split] if num_examples is None else num_examples):
        category = rng.choice(names)
        members = CATEGORIES[category][1]
        others = rng.sample([name for name in names if name != category], NUM_CHOICES - 1)
        distractors = [rng.choice([word for word in CATEGORIES[other][1] if word not in members]) for other in others]
        gold = rng.randrange(NUM_CHOICES)
        words = distractors[:gold] + [rng.choice(members)] + distractors[gold:]
        # Drawn whatever the split, so the questions do not depend on the noise level.
        flip, wrong = rng.random() < label_noise, rng.choice([k for k in range(NUM_CHOICES) if k != gold])
        records.append(
            {
                "id": f"wordpick-{split}-{index}",
                "question": rng.choice(TEMPLATES).format(category=category),
                "choices": {"text": words, "label": list(LETTERS[:NUM_CHOICES])},
                "answerKey": LETTERS[wrong if flip and split == "train" else gold],
            }
        )
    return records


TASKS = (
    Task("wordpick", arc_example, splits=TRAIN_VALIDATION_TEST, family="wordpick", id_field="id",
         generator=wordpick_records, sizable=True, num_choices=NUM_CHOICES,
         description="Built-in offline 4-way choice of the English word in a category (ARC schema), 256 train "
                     "questions with 15% wrong labels; for real pretrained models, best with answer_scoring: text."),
)  # fmt: skip
