"""The left-padding collator of multiple-choice examples."""

from __future__ import annotations

import logging

import torch

from .answers import answer_token_ids, ending_key
from .text import TEXT_SCORINGS, text_batch
from .truncation import shorten

logger = logging.getLogger(__name__)


class ChoiceCollator:
    """Tokenizes a batch of `ChoiceExample` dicts with left padding so that position -1 is every prompt's end.

    Rows whose `scoring` is a text scoring (`answer_scoring: text`) get `text.text_batch` instead.

    The batch holds `input_ids`, `attention_mask`, `choice_token_ids` and `choice_mask` (B x K_max, since tasks
    with different K may be mixed) and `labels` (the gold indices). A prompt longer than `max_length` loses its
    middle (`shorten`): its start (the instruction frame) and its end (choices and answer cue) survive.
    """

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._answer_ids: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def _choice_ids(self, prompt: str, answers: tuple[str, ...]) -> list[int]:
        key = ending_key(prompt, answers)
        if key not in self._answer_ids:
            self._answer_ids[key] = answer_token_ids(self.tokenizer, prompt, answers)
        return self._answer_ids[key]

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        if any(e.get("scoring", "letter") in TEXT_SCORINGS for e in examples):  # answer_scoring: text
            return text_batch(self.tokenizer, examples, self.max_length)
        ids = [shorten(row, self.max_length) for row in self.tokenizer([e["prompt"] for e in examples])["input_ids"]]
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([[pad] * (width - len(row)) + row for row in ids]),
            "attention_mask": torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids]),
        }
        choice_ids = [self._choice_ids(e["prompt"], tuple(e["answers"])) for e in examples]
        num_choices = max(len(ids) for ids in choice_ids)
        batch["choice_token_ids"] = torch.tensor([ids + [0] * (num_choices - len(ids)) for ids in choice_ids])
        batch["choice_mask"] = torch.tensor([[k < len(ids) for k in range(num_choices)] for ids in choice_ids])
        batch["labels"] = torch.tensor([e["gold"] for e in examples])
        return batch


def count_truncated(tokenizer, examples, max_length: int | None, what: str) -> int:
    """How many of `examples` (ChoiceExamples) have prompts longer than `max_length` tokens, so lose their middle;
    logged as a warning naming `what` (e.g. "synthetic validation") when there are any."""
    if max_length is None or not examples:
        return 0
    count = sum(len(ids) > max_length for ids in tokenizer([e.prompt for e in examples])["input_ids"])
    if count:
        logger.warning("%s: %d of %d prompts are longer than max_length=%d tokens and lose their middle (the "
                       "instruction and the answer cue are kept); raise max_length to keep them whole",
                       what, count, len(examples), max_length)  # fmt: skip
    return count


def length_sorted_batches(tokenizer, examples, batch_size: int, max_length: int | None = None):
    """(collated batches, order): `examples` (formatted, labelled `ChoiceExample`s) sorted by prompt length, as
    evaluation batches them; `order[j]` is the index in `examples` of the j-th example in batch order."""
    collator = ChoiceCollator(tokenizer, max_length)
    lengths = [len(ids) for ids in tokenizer([e.prompt for e in examples])["input_ids"]]
    order = sorted(range(len(examples)), key=lambda i: lengths[i])
    rows = [{"prompt": examples[i].prompt, "answers": examples[i].answers, "gold": examples[i].gold} for i in order]
    return [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)], order
