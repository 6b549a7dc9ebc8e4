"""Prompts longer than max_length: cut in the middle, so the instruction frame and the answer cue survive."""

from __future__ import annotations


def shorten(ids: list[int], max_length: int | None) -> list[int]:
    """`ids` cut to `max_length` tokens by dropping the middle: the first quarter of the budget is kept (the
    instruction frame and the start of the question), the rest from the end (the question's end, the choices,
    "Answer:"). Cutting from the left, as tokenizers do, would drop the question and keep only the choices."""
    if max_length is None or len(ids) <= max_length:
        return ids
    head = max_length // 4
    return ids[:head] + ids[len(ids) - (max_length - head) :]
