"""The multiple-choice data of the commands that score a run's examples one by one at its posterior (sensitivity,
refine, inspect --curvature): the task, from the option or the run's recipe, and a labelled split of it, each wrong
input one line before any model loads."""

from __future__ import annotations


def choice_task(task_option: str | None, recipe, run_dir: str, command: str):
    """(name, task) of `--task`, else of the run's recipe; a multiple-choice task, or a `UsageError`."""
    from ..errors import UsageError
    from ..tasks import get_task

    name = task_option or (recipe.data.dataset if recipe else None)
    if name is None:
        raise UsageError(f"{run_dir} has no recipe.yaml naming its task: pass --task")
    try:
        task = get_task(name)
    except KeyError as error:
        raise UsageError(f"--task: {error.args[0]}") from None
    if task.kind != "multiple_choice":
        raise UsageError(f"--task {name}: {command} needs a multiple-choice task (this one is {task.kind})")
    return name, task


def labelled_split(task, name: str, split: str, file: str | None, limit: int | None, recipe, purpose: str):
    """The examples of `split` (`file`, the first `limit`), under the run's protocol; a `UsageError` if any has no
    label (`purpose` says what needs them) or there are none."""
    from ..errors import UsageError
    from ..tasks import get_protocol, load_split

    loaded = load_split(task, split, file, limit, protocol=get_protocol(recipe.run.protocol if recipe else "ivon-lora"))
    if loaded.num_unlabelled:
        raise UsageError(f"{name} {split}: {loaded.num_unlabelled} of {len(loaded.examples)} examples have no label; "
                         f"{purpose} needs each example's training label (use a labelled split)")  # fmt: skip
    if not loaded.examples:
        raise UsageError(f"{name} {split}: no examples")
    return loaded
