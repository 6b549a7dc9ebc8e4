"""The multiple-choice example: what every task produces and the objective scores (plain data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChoiceExample:
    """One question: the prompt, the K answer strings that may follow it, and the gold index (-1: unknown).

    `scoring` says how the answers are scored (`vocabulary.ANSWER_SCORINGS`): "letter", each answer one token
    read at the prompt's last position (the default), or "text" / "text_norm", each answer's summed token
    log-probability after the prompt. `text_prompt` and `texts` are the question as answer texts for the text
    scorings (a context without the listed choices, and the K texts that follow it); empty where the answers are
    already texts (BoolQ's " True" / " False"). `choice.text.as_text_example` swaps them in.
    """

    id: str
    prompt: str
    answers: tuple[str, ...]
    gold: int
    text_prompt: str = ""
    texts: tuple[str, ...] = ()
    scoring: str = "letter"


def require_labelled(examples, purpose: str) -> None:
    """Raise a ValueError unless there are `examples` and each has its label (`purpose`: what needs them)."""
    if not examples:
        raise ValueError(f"No examples for {purpose}")
    unlabelled = [e.id for e in examples if e.gold < 0]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} examples have no label (e.g. {unlabelled[0]!r}): {purpose} needs the "
                         "training label of every example")  # fmt: skip
