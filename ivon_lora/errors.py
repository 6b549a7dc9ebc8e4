"""Every user-facing error type of ivon-lora (a leaf module: it imports nothing from the package).

The CLI reports these as one line (`ivon-lora CMD: message`, exit status 2) instead of a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe or command config that cannot be run as written (unknown key, wrong type, missing file, ...)."""


class UsageError(ValueError):
    """Command options that cannot be run together."""


class TaskDataError(ValueError):
    """Data that a task cannot use: a malformed record, or local data files of an unusable kind."""


class RecordError(TaskDataError):
    """A record that does not fit its task's schema."""


class RunDirError(ValueError):
    """A file of a run dir that is damaged or does not belong with the others (the message names the file)."""


class OutputDirLockedError(FileExistsError):
    """An output dir that another ivon-lora process is writing now (the message names it)."""


class TrainingDivergedError(RuntimeError):
    """A non-finite loss, gradient or weight during training (the message names the step and the last checkpoint)."""


class PackagedModelError(RuntimeError):
    """A model from the package index (builtin:smollm2-135m) that cannot be fetched or converted here."""


# What a command reports as one line; FileNotFoundError / FileExistsError name the path that is missing or in the way.
USER_ERRORS = (
    RecipeError,
    UsageError,
    TaskDataError,
    RunDirError,
    TrainingDivergedError,
    PackagedModelError,
    FileNotFoundError,
    FileExistsError,
)
