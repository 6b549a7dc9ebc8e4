"""The task registry: every suite module's `TASKS` (both kinds: see `Task.kind`), plus MMLU subjects made on demand."""

from __future__ import annotations

from ..registry import Registry, unknown_name
from . import (antonyms, arc, boolq, commonsense_qa, gsm8k, hellaswag, open_qa, piqa, siqa, synthetic, winogrande,
               wordfacts, wordpick, wordqa)  # fmt: skip
from .base import TEST_SIZE_OPTION, Task, with_test_size
from .generative import GenerativeTask
from .mmlu import MMLU_CONFIGS, mmlu_subject, mmlu_task

MULTIPLE_CHOICE_MODULES = (synthetic, wordfacts, antonyms, wordpick, arc, winogrande, boolq, piqa, siqa, hellaswag,
                           commonsense_qa)  # fmt: skip
GENERATIVE_MODULES = (open_qa, gsm8k, wordqa)


def task_registry(modules) -> Registry[Task | GenerativeTask]:
    """Every task of the suite `modules` (each with a `TASKS` tuple); two tasks of one name are refused."""
    return Registry("task", ((task.name, task) for module in modules for task in module.TASKS))


TASKS = task_registry((*MULTIPLE_CHOICE_MODULES, *GENERATIVE_MODULES))


def task_names(include_mmlu: bool = True) -> list[str]:
    """Every task name: the registered tasks, then `mmlu_<subject>` for every MMLU config."""
    return sorted(TASKS) + ([f"mmlu_{config}" for config in MMLU_CONFIGS] if include_mmlu else [])


def get_task(name: str) -> Task | GenerativeTask:
    """The task called `name` (its `kind` says which); MMLU subjects as `mmlu_<subject>` or `mmlu:<subject>`; a
    generated task with a test split of N records as `NAME:test_size=N` (`base.with_test_size`)."""
    if name in TASKS:
        return TASKS[name]
    base, separator, option = name.rpartition(":")
    if separator and option.startswith(f"{TEST_SIZE_OPTION}="):
        return with_test_size(get_task(base), option.partition("=")[2])
    subject = mmlu_subject(name)
    if subject is not None:
        return mmlu_task(subject)
    listing = f"{', '.join(sorted(TASKS))}, mmlu_<subject> ({len(MMLU_CONFIGS)} MMLU configs, e.g. mmlu_anatomy)"
    raise unknown_name("task", name, task_names(), listing)
