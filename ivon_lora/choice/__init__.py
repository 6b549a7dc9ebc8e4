"""The multiple-choice objective: example type, prompt formats, answer spelling, collator, logits, Trainer.

`ChoiceExample` (plain data) is imported eagerly; the rest, which needs torch or transformers, on first use.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .example import ChoiceExample

if TYPE_CHECKING:
    from .answers import answer_token_ids, resolve_answers
    from .collator import ChoiceCollator
    from .logits import choice_logits
    from .prompts import PROMPT_FORMATS, format_examples, render_chat_prompt
    from .trainer import ChoiceLossMixin, ChoiceTrainer, choice_rows

_LAZY = {
    "answer_token_ids": ".answers",
    "resolve_answers": ".answers",
    "ChoiceCollator": ".collator",
    "choice_logits": ".logits",
    "PROMPT_FORMATS": ".prompts",
    "format_examples": ".prompts",
    "render_chat_prompt": ".prompts",
    "ChoiceLossMixin": ".trainer",
    "ChoiceTrainer": ".trainer",
    "choice_rows": ".trainer",
}

__all__ = ["ChoiceExample", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
