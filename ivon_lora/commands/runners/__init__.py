"""The kinds of `ivon-lora eval`, one `Runner` class each (`base.py` has the type, the registry and what a kind
declares); importing this package registers the built-in kinds: multiple choice, generative, SFT and lm-eval."""

from __future__ import annotations

from . import choice, generative, lm_eval, sft  # noqa: F401  (each registers its kind)
from .base import RUNNERS, Runner, register_runner

__all__ = ["RUNNERS", "Runner", "register_runner", "select_runner"]


def select_runner(options, recipe) -> type[Runner]:
    """The one registered kind that applies to `options` for a run with `recipe`."""
    applying = [cls for cls in RUNNERS.values() if cls.applies(options, recipe)]
    if len(applying) != 1:
        raise RuntimeError(f"Eval kinds {[cls.name for cls in applying]} apply to these options; exactly one must")
    return applying[0]
