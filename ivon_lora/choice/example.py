"""The multiple-choice example: what every task produces and the objective scores (plain data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChoiceExample:
    """One question: the prompt, the K answer strings that may follow it, and the gold index (-1: unknown)."""

    id: str
    prompt: str
    answers: tuple[str, ...]
    gold: int
