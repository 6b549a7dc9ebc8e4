"""Loading a task's split: records from the Hub, local files or a generator, then examples under a protocol.

Order of operations, chosen so that ids and `limit` mean the same thing under every protocol:
1. read the split's records (all of them);
2. keep the first `limit` records (`limit` counts raw records, before any filter);
3. build each record's example; a malformed record is an error naming the task, split, source and row,
   never a dropped row; ids are the record's id field, else f"{split}-{row}" with `row` the record's index
   in the source, and must be unique within the split;
4. apply the protocol's documented filters (e.g. ARC's 4-choice subset) and its answer set; every filter's
   drop count is logged and kept in the returned `LoadedSplit`.

`load_split` loads multiple-choice tasks and `load_generative_split` generative ones (steps 1-3: protocols filter
and re-letter choices, which free-form answers do not have); each refuses the other kind by name.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace

from ..choice.example import ChoiceExample
from ..errors import RecordError, TaskDataError
from .base import GENERATIVE, MULTIPLE_CHOICE, RecordSource, Task
from .generative import GenerativeExample, GenerativeTask
from .protocols import DEFAULT_PROTOCOL, Protocol, get_protocol
from .registry import get_task

logger = logging.getLogger(__name__)

# File extension -> `datasets` builder. Nested fields (ARC's choices{text[], label[]}, HellaSwag's endings[])
# need json, jsonl or parquet: csv has no nested values.
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class LoadedSplit:
    """The examples of one split and what loading them did (rows read, dropped per filter, unlabelled)."""

    task: str
    split: str
    source: str
    # The protocol preset that filtered a multiple-choice split (None for a generative split: nothing filters it).
    protocol: str | None
    examples: list[ChoiceExample] | list[GenerativeExample]
    # Rows in the source, and the `limit` applied to them (None: all rows read).
    num_rows: int
    limit: int | None
    # Filter name -> rows it dropped (every filter of the protocol for this task, zeros included).
    dropped: dict[str, int]
    # Kept examples without a label (gold -1: the Hub's unlabelled test splits); evaluation refuses them.
    num_unlabelled: int

    @property
    def num_read(self) -> int:
        return self.num_rows if self.limit is None else min(self.limit, self.num_rows)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """One line for logs and reports, e.g. "arc_challenge validation (allenai/ai2_arc:ARC-Challenge): 295
        examples from 299 rows; dropped 4 of 299 rows (filter: 4-choice subset, protocol ivon-lora)"."""
        if self.num_read < self.num_rows:
            read = f"the first {self.num_read} of {self.num_rows} rows (limit {self.limit})"
        else:
            read = f"{self.num_rows} rows"
        parts = [f"{self.task} {self.split} ({self.source}): {len(self.examples)} examples from {read}"]
        parts += [
            f"dropped {count} of {self.num_read} rows (filter: {name}, protocol {self.protocol})"
            for name, count in self.dropped.items()
        ]
        if self.num_unlabelled:
            parts.append(f"{self.num_unlabelled} without a label (gold -1)")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        """Everything but the examples, for result files."""
        return {
            "task": self.task,
            "split": self.split,
            "source": self.source,
            "protocol": self.protocol,
            "num_examples": len(self.examples),
            "num_rows": self.num_rows,
            "limit": self.limit,
            "num_read": self.num_read,
            "dropped": dict(self.dropped),
            "num_unlabelled": self.num_unlabelled,
            "summary": self.summary(),
        }


def resolve_data_files(path: str | os.PathLike) -> tuple[str, list[str]]:
    """The `datasets` builder and the files of `path`: one data file, or a directory of files of one extension."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(entry.path for entry in os.scandir(path) if entry.is_file() and not entry.name.startswith("."))
        if not files:
            raise TaskDataError(
                f"Data directory {path!r} holds no data files: put {', '.join(DATA_FILE_BUILDERS)} files in it"
            )
        extensions = sorted({os.path.splitext(file)[1].lower() for file in files})
        if len(extensions) > 1:
            raise TaskDataError(
                f"Data directory {path!r} mixes file types {extensions}: keep the files of one split and one "
                "extension in it"
            )
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"Data file {path!r} does not exist")
    extension = os.path.splitext(files[0])[1].lower()
    if extension not in DATA_FILE_BUILDERS:
        raise TaskDataError(
            f"Unsupported data file type {extension or '(none)'!r} in {path!r}: use {', '.join(DATA_FILE_BUILDERS)}"
        )
    return DATA_FILE_BUILDERS[extension], files


def load_records(task: RecordSource, split: str, data_files: str | os.PathLike | None = None) -> list[dict]:
    """The raw records of `task`'s `split`: from `data_files` if given, else the generator or the Hub."""
    if split not in task.splits:
        raise TaskDataError(f"Task {task.name!r} has no split {split!r}; available: {', '.join(task.splits)}")
    if data_files is not None:
        builder, files = resolve_data_files(data_files)
        records = []
        for file in files:
            records += read_data_file(builder, file)
        return records
    if task.generator is not None:
        return task.generator(task.splits[split])
    import datasets

    try:
        dataset = datasets.load_dataset(task.hub_path, task.hub_config, split=task.splits[split],
                                        revision=task.hub_revision)  # fmt: skip
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        raise hub_unreachable(task.hub_path, error, LOCAL_FILE_HINT) from None
    return list(dataset)


LOCAL_FILE_HINT = ("pass the split's records as a local file instead (train: train_file= / eval_file=; eval: --file, "
                   "--select-file)")  # fmt: skip


def hub_unreachable(dataset: str, error: Exception, hint: str) -> TaskDataError:
    """The one-line error for a Hub dataset that cannot be loaded here (offline, unreachable, not cached)."""
    return TaskDataError(f"Dataset {dataset!r} could not be loaded from the Hugging Face Hub "
                         f"({' '.join(str(error).split())}): {hint}")  # fmt: skip


def read_data_file(builder: str, path: str) -> list:
    """The records of one data file of `resolve_data_files`, as read (not validated); errors name the file."""
    return _read_json_records(path) if builder == "json" else _read_table_records(builder, path)


def _read_json_records(path: str) -> list:
    """The records of a .json (one array of objects, or JSON lines) or .jsonl file; errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise TaskDataError(f"{path}: not UTF-8 text (byte {error.start}): save it as UTF-8") from None
    if not text.strip():
        raise TaskDataError(f"{path}: the file is empty: it holds no records")
    if path.lower().endswith(".json"):
        try:
            value = json.loads(text)
            return value if isinstance(value, list) else [value]
        except json.JSONDecodeError:
            pass  # JSON lines in a .json file, as `datasets` reads them
    records = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise TaskDataError(
                    f"{path}, line {line_number}: not valid JSON ({error.msg}, column {error.colno})"
                ) from None
    return records


def _read_table_records(builder: str, path: str) -> list:
    import datasets

    try:
        records = list(datasets.load_dataset(builder, data_files=[path], split="train"))
    except Exception as error:  # noqa: BLE001 - whatever the reader raises, the user is told which file
        raise TaskDataError(f"{path}: not a readable {builder} file ({type(error).__name__}: {error})") from None
    if not records:
        raise TaskDataError(f"{path}: the file holds no records")
    return records


def load_split(
    task: str | Task,
    split: str,
    data_files: str | os.PathLike | None = None,
    limit: int | None = None,
    protocol: str | Protocol = DEFAULT_PROTOCOL,
) -> LoadedSplit:
    """The examples of multiple-choice `task`'s `split` under `protocol`, with what its filters dropped (see the
    module doc)."""
    task = _task_of_kind(task, MULTIPLE_CHOICE)
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    _check_limit(limit)
    records = load_records(task, split, data_files)
    source = task.source(data_files)
    filters = protocol.filters(task)
    dropped = {f.name: 0 for f in filters}
    examples: list[ChoiceExample] = []
    first_row_of_id: dict[str, int] = {}
    for row, record in enumerate(records[:limit]):
        with _at_row(task, split, source, row):
            example = _example(task, split, row, record)
            _check_new_id(example.id, row, first_row_of_id)
            rejected_by = next((f.name for f in filters if not f.keep(example)), None)
            kept = protocol.answer_set(task, example) if rejected_by is None else None
        if kept is None:
            dropped[rejected_by] += 1
        else:
            examples.append(kept)
    loaded = LoadedSplit(
        task=task.name,
        split=split,
        source=source,
        protocol=protocol.name,
        examples=examples,
        num_rows=len(records),
        limit=limit,
        dropped=dropped,
        num_unlabelled=sum(example.gold == -1 for example in examples),
    )
    logger.info(loaded.summary())
    return loaded


def load_generative_split(
    task: str | GenerativeTask, split: str, data_files: str | os.PathLike | None = None, limit: int | None = None
) -> LoadedSplit:
    """The `GenerativeExample`s of generative `task`'s `split` (the first `limit` records; nothing is filtered)."""
    task = _task_of_kind(task, GENERATIVE)
    _check_limit(limit)
    records = load_records(task, split, data_files)
    source = task.source(data_files)
    examples: list[GenerativeExample] = []
    first_row_of_id: dict[str, int] = {}
    for row, record in enumerate(records[:limit]):
        with _at_row(task, split, source, row):
            _check_record(record)
            example = _with_id(task, split, row, record, task.build_example(record))
            _check_new_id(example.id, row, first_row_of_id)
        examples.append(example)
    loaded = LoadedSplit(task=task.name, split=split, source=source, protocol=None, examples=examples,
                         num_rows=len(records), limit=limit, dropped={}, num_unlabelled=0)  # fmt: skip
    logger.info(loaded.summary())
    return loaded


def load_examples(
    task_name: str | Task,
    split: str,
    data_files: str | os.PathLike | None = None,
    limit: int | None = None,
    protocol: str | Protocol = DEFAULT_PROTOCOL,
) -> list[ChoiceExample]:
    """`load_split(...).examples`: the `ChoiceExample`s of one split (see `load_split` for the filter report)."""
    return load_split(task_name, split, data_files, limit, protocol).examples


def _task_of_kind(task: str | Task | GenerativeTask, kind: str) -> Task | GenerativeTask:
    task = get_task(task) if isinstance(task, str) else task
    if task.kind != kind:
        loader = "load_generative_split" if task.kind == GENERATIVE else "load_split"
        raise TaskDataError(f"Task {task.name!r} is a {task.kind.replace('_', '-')} task, not a "
                            f"{kind.replace('_', '-')} one: load it with {loader}")  # fmt: skip
    return task


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"Invalid limit value: {limit!r} (must be >= 0)")


@contextmanager
def _at_row(task: RecordSource, split: str, source: str, row: int):
    """Re-raise a record's error as one line naming the task, split, source and row."""
    try:
        yield
    except (RecordError, KeyError, TypeError) as error:
        raise RecordError(f"Task {task.name!r}, split {split!r} ({source}), row {row}: {error}") from error


def _check_record(record) -> None:
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object of fields, got {type(record).__name__}")


def _check_new_id(example_id: str, row: int, first_row_of_id: dict[str, int]) -> None:
    if example_id in first_row_of_id:
        raise RecordError(f"id {example_id!r} repeats the id of row {first_row_of_id[example_id]}")
    first_row_of_id[example_id] = row


def _with_id(task: RecordSource, split: str, row: int, record: dict, example):
    """`example` with its id: the record's id field, else f"{split}-{row}"."""
    record_id = record.get(task.id_field) if task.id_field else None
    return replace(example, id=f"{split}-{row}" if record_id in (None, "") else str(record_id))


def _example(task: Task, split: str, row: int, record: dict) -> ChoiceExample:
    """`record` as an example with its id, checked to carry a label unless its split may be unlabelled."""
    _check_record(record)
    example = task.build_example(record)
    if task.num_choices is not None and len(example.answers) != task.num_choices:
        raise RecordError(f"{len(example.answers)} choices, but every {task.name} question has {task.num_choices}")
    if example.gold == -1 and split not in task.unlabelled_splits:
        allowed = (
            f"only {', '.join(sorted(task.unlabelled_splits))} may be" if task.unlabelled_splits else "none may be"
        )
        raise RecordError(f"the record has no label, but split {split!r} must be labelled ({allowed})")
    return _with_id(task, split, row, record, example)
