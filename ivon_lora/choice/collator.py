"""The left-padding collator of multiple-choice examples."""

from __future__ import annotations

import torch

from .answers import answer_token_ids, ending_key


class ChoiceCollator:
    """Tokenizes a batch of `ChoiceExample` dicts with left padding so that position -1 is every prompt's end.

    The batch holds `input_ids`, `attention_mask`, `choice_token_ids` and `choice_mask` (B x K_max, since tasks
    with different K may be mixed) and `labels` (the gold indices). Prompts longer than `max_length` lose their
    beginning, never their end.
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
        tokenizer = self.tokenizer
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "left"
        try:
            batch = tokenizer(
                [e["prompt"] for e in examples],
                padding=True,
                padding_side="left",
                truncation=self.max_length is not None,
                max_length=self.max_length,
                return_tensors="pt",
            )
        finally:
            tokenizer.truncation_side = side
        choice_ids = [self._choice_ids(e["prompt"], tuple(e["answers"])) for e in examples]
        num_choices = max(len(ids) for ids in choice_ids)
        batch["choice_token_ids"] = torch.tensor([ids + [0] * (num_choices - len(ids)) for ids in choice_ids])
        batch["choice_mask"] = torch.tensor([[k < len(ids) for k in range(num_choices)] for ids in choice_ids])
        batch["labels"] = torch.tensor([e["gold"] for e in examples])
        return dict(batch)
