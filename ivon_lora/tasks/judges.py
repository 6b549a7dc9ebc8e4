"""Correctness judges of free-form answers: SQuAD's normalised exact match and token F1, and GSM8K's numeric match.

A judge scores a prediction against a question's reference answers (the max over the references, in [0, 1]);
an answer is correct when its score is 1. The same judge decides when two generated answers mean the same
(`Judge.equivalent`), which semantic agreement and discrete semantic entropy cluster by.

- `exact_match` and `token_f1` follow the official SQuAD v2.0 evaluation script: lower-case, drop ASCII
  punctuation, drop the articles a/an/the, collapse whitespace; F1 over the bag of tokens (1 when both sides
  normalise to nothing, 0 when only one does).
- `numeric_match` reads the final number of a generation, as GSM8K's format has it: the number after the last
  "####" if there is one, else the last number in the text; thousands commas and "$" are dropped and the
  numbers are compared exactly as decimals ("3.50" = "3.5", "1,000" = "1000", "-7" != "7").
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from ..registry import Registry

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)
# A number as written in a math answer: an optional sign (not a hyphen between two words or numbers), an optional
# "$", digits with or without thousands commas, and decimals. "1,2,3" is three numbers; "5-3" is 5 and 3.
_NUMBER = r"(?:(?<![\w)])-)?(?:\$-?)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_NUMBER_PATTERN = re.compile(_NUMBER)
_FINAL_ANSWER_PATTERN = re.compile(r"####\s*(" + _NUMBER + ")")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str) or not references:
        raise ValueError(f"Expected a non-empty list of reference answers, got {references!r}")


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the prediction equals one of the references after `normalize_answer`, else 0.0."""
    _check_references(references)
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(reference) for reference in references))


def _f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
    if not prediction_tokens or not reference_tokens:
        return float(prediction_tokens == reference_tokens)
    common = sum((collections.Counter(prediction_tokens) & collections.Counter(reference_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD's token F1 of the normalised answers, the max over the references."""
    _check_references(references)
    tokens = normalize_answer(prediction).split()
    return max(_f1(tokens, normalize_answer(reference).split()) for reference in references)


def extract_number(text: str) -> Fraction | None:
    """The final number of `text` ("#### N" if present, else the last number), exactly; None if it has none."""
    final = _FINAL_ANSWER_PATTERN.findall(text)
    numbers = final or _NUMBER_PATTERN.findall(text)
    if not numbers:
        return None
    written = numbers[-1].replace(",", "").replace("$", "")
    negative = written.count("-") % 2 == 1  # "-$5" and "$-5" are both negative
    value = Fraction(written.replace("-", ""))
    return -value if negative else value


def numeric_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the prediction's final number equals a reference's final number, else 0.0 (no number: 0.0)."""
    _check_references(references)
    predicted = extract_number(prediction)
    return float(predicted is not None and any(predicted == extract_number(reference) for reference in references))


@dataclass(frozen=True)
class Judge:
    """A correctness judge: `score(prediction, references)` in [0, 1]; an answer is correct when it scores 1."""

    name: str
    score: Callable[[str, Sequence[str]], float]
    description: str = ""

    def correct(self, prediction: str, references: Sequence[str]) -> bool:
        return self.score(prediction, references) == 1.0

    def equivalent(self, first: str, second: str) -> bool:
        """Whether two answers mean the same: each is correct with the other as its only reference.

        Both directions are asked so that the relation is symmetric whatever the judge; the three judges here
        are symmetric already (equal normalised text, equal token bags, equal final numbers).
        """
        return self.correct(first, [second]) and self.correct(second, [first])


JUDGES: Registry[Judge] = Registry(
    "judge",
    (
        (judge.name, judge)
        for judge in (
            Judge("exact_match", exact_match, "SQuAD-normalised answer equals a reference"),
            Judge("token_f1", token_f1, "SQuAD token F1 with the closest reference (correct: F1 = 1)"),
            Judge("numeric_match", numeric_match, "the final number equals the reference's ('#### N', else the last)"),
        )
    ),
)


def get_judge(name: str) -> Judge:
    return JUDGES.get(name)
