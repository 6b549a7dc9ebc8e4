"""The multiple-choice objective: answer-token resolution, the left-padding collator and K-way logits.

A question is scored by the logits of its K answer tokens at the last prompt position (ivon-notes §3): one
forward pass per question, the LM head evaluated at that single position (`logits_to_keep=1`), never over the
whole sequence. Training minimises the cross-entropy of the K-way softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ChoiceExample:
    """One question: the prompt, the K answer strings that may follow it, and the gold index (-1: unknown)."""

    id: str
    prompt: str
    answers: tuple[str, ...]
    gold: int


def answer_token_ids(tokenizer, prompt: str, answers) -> list[int]:
    """The token id of each answer as it follows `prompt`.

    Resolved by tokenizing prompt and prompt + answer: the answer must add exactly one token and leave the
    prompt's tokens unchanged. This is what makes " A" (byte-level BPE, Llama-3/Qwen) and "▁A" (sentencepiece,
    Llama-2) come out right, with or without a BOS token.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    token_ids = []
    for answer in answers:
        full_ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        if len(full_ids) != len(prompt_ids) + 1 or full_ids[: len(prompt_ids)] != prompt_ids:
            added = tokenizer.convert_ids_to_tokens(full_ids[len(prompt_ids) - 1 :])
            raise ValueError(
                f"Answer {answer!r} is not a single token after the prompt ...{prompt[-30:]!r} for tokenizer "
                f"{type(tokenizer).__name__} (the tokens at the boundary are {added}). Choose answer labels that "
                "tokenize to one token after the prompt, e.g. ' A'/' B' or ' True'/' False'."
            )
        token_ids.append(full_ids[-1])
    if len(set(token_ids)) != len(token_ids):
        raise ValueError(f"Answers {list(answers)} map to repeated tokens {token_ids}; they must be distinct.")
    return token_ids


class ChoiceCollator:
    """Tokenizes a batch of `ChoiceExample` dicts with left padding so that position -1 is every prompt's end.

    The batch holds `input_ids`, `attention_mask`, `choice_token_ids` and `choice_mask` (B x K_max, since tasks
    with different K may be mixed) and `labels` (the gold indices). Prompts longer than `max_length` lose their
    beginning, never their end.
    """

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        # Answer tokens depend only on the prompt's ending and the answer strings, so they are cached per pair.
        self._answer_ids: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def _choice_ids(self, prompt: str, answers: tuple[str, ...]) -> list[int]:
        key = (prompt[-32:], answers)
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


def choice_logits(model, batch) -> torch.Tensor:
    """B x K_max float32 logits of the answer tokens at the last position; absent choices are -inf."""
    outputs = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1, use_cache=False
    )
    last = outputs.logits[:, -1, :]
    logits = last.gather(1, batch["choice_token_ids"]).float()
    return logits.masked_fill(~batch["choice_mask"], float("-inf"))


class ChoiceLossMixin:
    """Trainer mixin: the loss is the K-way cross-entropy of `choice_logits`, averaged over the micro-batch."""

    # The loss is a per-micro-batch mean: let the Trainer divide by the accumulation steps as usual.
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = choice_logits(model, inputs)
        loss = F.cross_entropy(logits, inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            logits = choice_logits(model, inputs)
            loss = F.cross_entropy(logits, inputs["labels"])
        return loss.detach(), (None if prediction_loss_only else logits), inputs["labels"]
