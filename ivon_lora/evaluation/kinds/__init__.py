"""The kinds of evaluation, one registered `EvalKind` strategy each (`base.py` has the type, the registry and what
a kind declares); importing this package registers the built-in kinds: multiple choice, generative, SFT and
lm-eval."""

from __future__ import annotations

from . import choice, generative, lm_eval, sft  # noqa: F401  (each registers its kind)
from .base import EVAL_KINDS, EvalKind, register_kind

__all__ = ["EVAL_KINDS", "EvalKind", "register_kind", "select_kind"]


def select_kind(options, recipe) -> type[EvalKind]:
    """The one registered kind that applies to `options` for a run with `recipe`."""
    applying = [cls for cls in EVAL_KINDS.values() if cls.applies(options, recipe)]
    if len(applying) != 1:
        raise RuntimeError(f"Eval kinds {[cls.name for cls in applying]} apply to these options; exactly one must")
    return applying[0]
