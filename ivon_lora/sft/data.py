"""SFT data: one split of instruction or chat data, validated row by row, as a TRL-ready `datasets.Dataset`.

Where the rows come from (`load_sft_split`):
- a built-in dataset (`builtin:wordqa`, or just `wordqa`): made offline by code, see `BUILTIN_SFT_DATASETS`;
- a local file or a directory of files of one type (`data_file`: .json (an array of objects, or JSON lines),
  .jsonl, .parquet, .csv), which takes precedence over `dataset`;
- a Hugging Face Hub dataset (`dataset: HuggingFaceH4/ultrachat_200k`, `split: train_sft`, optional config
  name), loaded with `datasets.load_dataset(dataset, config_name, split=split)`.

Accepted formats, detected from the columns of the rows (columns of no format, e.g. an id, are dropped; columns
of two formats in one split are an error):

| format | columns | becomes |
|---|---|---|
| messages (OpenAI-style chat) | `messages`: [{"role": "system"/"user"/"assistant", "content": str}, ...] | `messages` |
| prompt-completion | `prompt`, `completion`: two strings, or two message lists | `prompt`, `completion` |
| alpaca | `instruction`, `output`; optional `input`, `system` (strings) | `prompt`, `completion` (messages) |

- messages: every message has exactly a role and a string content; the last message is the assistant's.
  TRL learns every token of the chat, or only the assistant turns with `assistant_only_loss` (which needs a
  chat template with `{% generation %}` markers).
- prompt-completion: trained with TRL's completion-only loss (the prompt is context); with message lists, the
  completion ends with an assistant message.
- alpaca rows become conversational prompt-completion rows: prompt = [{"role": "system", "content": system}
  (if given), {"role": "user", "content": instruction + ("\\n\\n" + input if input else "")}], completion =
  [{"role": "assistant", "content": output}].

Every row is checked before training: a bad row is an error naming the file (or Hub id and split) and the row
(rows count from 0), never a dropped row. Tool calls are not supported (no "tool" role, no extra message fields).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import RecordError, TaskDataError
from ..registry import Registry
from ..tasks.loading import read_data_file, resolve_data_files
from ..tasks.wordqa import SPLIT_SIZES as WORDQA_SPLIT_SIZES
from ..tasks.wordqa import wordqa_records

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
ROLES = ("system", "user", "assistant")
# Format name -> the columns that mark it (a split is in the one format whose columns it has, all of them).
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}
ALPACA_OPTIONAL = ("input", "system")
SCHEMAS = (
    '"messages" (a list of {"role", "content"} messages); "prompt" + "completion" (two strings, or two message '
    'lists); or alpaca "instruction" + "output" (+ optional "input", "system")'
)


@dataclass(frozen=True)
class BuiltinSFTDataset:
    """An SFT dataset made offline by code: split name -> rows in one of the accepted formats."""

    name: str
    splits: tuple[str, ...]
    rows: Callable[[str], list[dict]]
    description: str = ""


def wordqa_chat_rows(split: str) -> list[dict]:
    """wordqa's questions as conversational prompt-completion rows: the user's question (which asks for one word),
    then the assistant's first accepted answer. Prompt-completion, not messages, so that TRL learns the answer
    only (completion_only_loss) with any chat template, including those without {% generation %} markers."""
    return [
        {"prompt": [{"role": "user", "content": record["question"]}],
         "completion": [{"role": "assistant", "content": record["answers"][0]}]}
        for record in wordqa_records(split)
    ]  # fmt: skip


BUILTIN_SFT_DATASETS: Registry[BuiltinSFTDataset] = Registry("built-in SFT dataset", (
    (dataset.name, dataset)
    for dataset in (
        BuiltinSFTDataset("wordqa", tuple(WORDQA_SPLIT_SIZES), wordqa_chat_rows,
                          "One-word answers to 'what kind of thing is a mango' (ivon_lora.tasks.wordqa), split by "
                          "word; for pretrained instruct models."),
    )
))  # fmt: skip


@dataclass(frozen=True)
class SFTSplit:
    """One split of SFT data, TRL-ready, with where it came from and in which format it was written.

    `dataset` has the column "messages" (format "messages") or the columns "prompt" and "completion" (formats
    "prompt-completion" and "alpaca"), and nothing else.
    """

    dataset: datasets.Dataset
    source: str  # "builtin:wordqa", the Hub id, or the local file/dir path
    split: str
    format: str  # the input format: "messages" | "prompt-completion" | "alpaca"
    config_name: str | None = None  # the Hub config, if any
    # Rows in the source, and the `max_samples` applied to them (None: all rows).
    source_rows: int = 0
    max_samples: int | None = None

    def summary(self) -> str:
        """One line for logs, e.g. "builtin:wordqa train: 149 rows (messages)"."""
        where = f"{self.source}:{self.config_name}" if self.config_name else self.source
        read = f" (the first {len(self.dataset)} of {self.source_rows})" if len(self.dataset) < self.source_rows else ""
        return f"{where} {self.split}: {len(self.dataset)} rows{read} ({self.format})"

    def as_dict(self) -> dict:
        """Provenance for result files (metrics.json)."""
        return {
            "source": self.source,
            "config_name": self.config_name,
            "split": self.split,
            "format": self.format,
            "rows": len(self.dataset),
            "source_rows": self.source_rows,
            "max_samples": self.max_samples,
        }


def load_sft_split(
    dataset: str | None,
    split: str,
    data_file: str | os.PathLike | None = None,
    *,
    config_name: str | None = None,
    max_samples: int | None = None,
) -> SFTSplit:
    """The rows of `split`, validated and TRL-ready (see the module doc): from `data_file` if given, else from
    the built-in dataset or the Hub dataset `dataset`. `max_samples` keeps the first N rows."""
    import datasets

    if max_samples is not None and max_samples < 1:
        raise ValueError(f"Invalid max_samples value: {max_samples!r} (must be >= 1)")
    builtin = _builtin(dataset) if data_file is None and dataset is not None else None
    if data_file is not None:
        source = os.fspath(data_file)
        builder, files = resolve_data_files(source)
        rows, where = [], []
        for file in files:
            records = read_data_file(builder, file)
            rows += records
            where += [(file, row) for row in range(len(records))]
    elif builtin is not None:
        source = BUILTIN_PREFIX + builtin.name
        if split not in builtin.splits:
            raise TaskDataError(f"{source} has no split {split!r}; available: {', '.join(builtin.splits)}")
        rows = builtin.rows(split)
        where = [(f"{source} (split {split!r})", row) for row in range(len(rows))]
    elif dataset is not None:
        source = dataset
        rows = _load_hub(dataset, config_name, split)
        hub_where = f"{':'.join(filter(None, (dataset, config_name)))} (split {split!r})"
    else:
        raise TaskDataError("No SFT data: give a dataset (a built-in name or a Hub id) or a local data file")
    if len(rows) == 0:
        raise TaskDataError(f"{source} (split {split!r}) holds no rows: nothing to train or evaluate on")

    source_rows = len(rows)
    if max_samples is not None and max_samples < source_rows:
        rows = rows.select(range(max_samples)) if isinstance(rows, datasets.Dataset) else rows[:max_samples]
    if isinstance(rows, datasets.Dataset):  # from the Hub: checked as read, converted by `map` (no copy in memory)
        data_format = detect_format(rows.column_names, hub_where)
        _check_rows(data_format, rows, ((hub_where, row) for row in range(len(rows))))
        trl_dataset = rows.map(to_trl_row, fn_kwargs={"data_format": data_format}, remove_columns=rows.column_names)
    else:
        data_format = detect_format(_columns(rows, where), source)
        _check_rows(data_format, rows, where)
        trl_dataset = datasets.Dataset.from_list([to_trl_row(record, data_format) for record in rows])
    hub_config = config_name if isinstance(rows, datasets.Dataset) else None  # files and built-ins have none
    loaded = SFTSplit(trl_dataset, source, split, data_format, hub_config, source_rows, max_samples)
    logger.info(loaded.summary())
    return loaded


def _builtin(name: str) -> BuiltinSFTDataset | None:
    """The built-in dataset `name` or "builtin:<name>"; None for any other name without the prefix (a Hub id)."""
    bare = name.removeprefix(BUILTIN_PREFIX)
    if bare in BUILTIN_SFT_DATASETS:
        return BUILTIN_SFT_DATASETS[bare]
    if name.startswith(BUILTIN_PREFIX):
        try:
            BUILTIN_SFT_DATASETS.get(bare)
        except KeyError as error:
            raise TaskDataError(error.args[0]) from None
    return None


def _load_hub(dataset: str, config_name: str | None, split: str) -> datasets.Dataset:
    import datasets

    try:
        return datasets.load_dataset(dataset, config_name, split=split)
    except Exception as error:  # noqa: BLE001 - offline, unknown id, bad config or split: the user is told which
        where = ":".join(filter(None, (dataset, config_name)))
        detail = (str(error).strip().splitlines() or [""])[0]
        raise TaskDataError(
            f"Cannot load the Hub dataset {where!r} split {split!r} ({type(error).__name__}: {detail}). If it is "
            "not reachable from here, save its split as json/jsonl/parquet files and give them as train_file / "
            "eval_file instead"
        ) from error


def _columns(rows: Sequence, where: Sequence[tuple[str, int]]) -> list[str]:
    """The columns that hold a value in some row (None is no value: tables fill a missing column with None)."""
    columns: dict[str, None] = {}
    for record, (file, row) in zip(rows, where):
        if not isinstance(record, dict):
            raise RecordError(f"{file}, row {row}: a row is an object of fields, got {type(record).__name__}")
        columns.update((key, None) for key, value in record.items() if value is not None)
    return list(columns)


def detect_format(columns: Iterable[str], source: str) -> str:
    """The format whose marking columns are all among `columns`; an error naming them if none or several are."""
    columns = list(columns)
    found = [name for name, marks in FORMAT_COLUMNS.items() if all(column in columns for column in marks)]
    if len(found) == 1:
        return found[0]
    problem = f"mix the formats {' and '.join(found)}" if found else "are in no SFT format"
    raise TaskDataError(f"{source}: the rows {problem} (columns found: {columns}); use one of: {SCHEMAS}")


def _check_rows(data_format: str, rows: Iterable, where: Iterable[tuple[str, int]]) -> None:
    """Raise a `RecordError` naming the file and row of the first row that is not a valid row of `data_format`,
    or whose prompt and completion are not of the same kind (strings or message lists) as the first row's."""
    first_kind = None
    for record, (file, row) in zip(rows, where):
        try:
            kind = _check(data_format, record)
            if first_kind is not None and kind != first_kind[0]:
                raise RecordError(
                    f"prompt and completion are {kind}, but in {first_kind[1]} they are {first_kind[0]}: keep one "
                    "kind in a split"
                )
            first_kind = first_kind or (kind, f"{file}, row {row}")
        except RecordError as error:
            raise RecordError(f"{file}, row {row}: {error}") from None


def _check(data_format: str, record) -> str:
    """Raise a `RecordError` if `record` is not a valid row of `data_format`; its kind ("strings" or "message
    lists": what its prompt and completion are; alpaca and messages rows are always "message lists")."""
    if not isinstance(record, dict):
        raise RecordError(f"a row is an object of fields, got {type(record).__name__}")
    if data_format == "messages":
        _check_messages(record.get("messages"), "messages")
    elif data_format == "prompt-completion":
        prompt, completion = record.get("prompt"), record.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            if not completion.strip():
                raise RecordError("completion is empty: nothing to learn")
            return "strings"
        if isinstance(prompt, list) and isinstance(completion, list):
            _check_messages(prompt, "prompt", last_from_assistant=False)
            _check_messages(completion, "completion")
        else:
            raise RecordError(
                f"Invalid prompt and completion values: a {type(prompt).__name__} and a {type(completion).__name__} "
                "(must be two strings or two message lists)"
            )
    else:
        for key in FORMAT_COLUMNS["alpaca"]:
            _check_text(record.get(key), key)
        for key in ALPACA_OPTIONAL:
            if record.get(key) is not None and not isinstance(record[key], str):
                raise RecordError(f"Invalid {key} value: {record[key]!r:.80} (must be a string if given)")
    return "message lists"


def _check_text(value, name: str) -> None:
    if not isinstance(value, str):
        raise RecordError(f"Invalid {name} value: {value!r:.80} (must be a string)")
    if not value.strip():
        raise RecordError(f"{name} is empty")


def _check_messages(messages, name: str, last_from_assistant: bool = True) -> None:
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"Invalid {name} value: {messages!r:.80} (must be a non-empty list of messages)")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(
                f"Invalid {name}[{index}] value: {message!r:.80} (must be an object with role and content)"
            )
        extra = sorted(key for key, value in message.items() if key not in ("role", "content") and value is not None)
        if extra:
            raise RecordError(f"{name}[{index}] has field(s) {extra}: a message holds only role and content")
        if message.get("role") not in ROLES:
            raise RecordError(f"{name}[{index}] has role {message.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise RecordError(
                f"Invalid {name}[{index}] content value: {message.get('content')!r:.80} (must be a string)"
            )
    if last_from_assistant:
        if messages[-1]["role"] != "assistant":
            raise RecordError(
                f"the last message of {name} is from {messages[-1]['role']!r}, not the assistant: nothing to learn"
            )
        if not messages[-1]["content"].strip():
            raise RecordError(f"the last assistant message of {name} is empty: nothing to learn")


def to_trl_row(record: dict, data_format: str) -> dict:
    """A valid row of `data_format` as TRL reads it: messages as {role, content} only, alpaca as chat messages."""
    if data_format == "messages":
        return {"messages": _plain_messages(record["messages"])}
    if data_format == "prompt-completion":
        if isinstance(record["prompt"], str):
            return {"prompt": record["prompt"], "completion": record["completion"]}
        return {"prompt": _plain_messages(record["prompt"]), "completion": _plain_messages(record["completion"])}
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return {"prompt": [*system, {"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": record["output"]}]}  # fmt: skip


def _plain_messages(messages: list[dict]) -> list[dict]:
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def is_conversational(split: SFTSplit) -> bool:
    """Whether the rows are chat messages (rendered with a chat template) rather than plain strings."""
    if split.format != "prompt-completion":
        return True  # messages, and alpaca converted to messages
    return len(split.dataset) > 0 and isinstance(split.dataset[0]["prompt"], list)


def check_chat_template(split: SFTSplit, tokenizer, model_name: str, chat_template_path: str | None = None) -> None:
    """Conversational rows need a chat template: the tokenizer's, or the recipe's chat_template_path (TRL's key)."""
    if is_conversational(split) and not chat_template_path and not getattr(tokenizer, "chat_template", None):
        raise TaskDataError(
            f"{split.summary()}: the rows are chat messages, but the tokenizer of {model_name!r} has no chat template: "
            "use a chat/instruct model, set chat_template_path (a template file or a model with one), or write "
            "the rows as plain prompt/completion strings"
        )


def prompt_rendering(recipe) -> tuple[bool, str]:
    """Whether an SFT run read its prompts through the chat template: its train data is conversational (its first
    train row, read again). Train rows that cannot be read here (e.g. a Hub dataset offline): chat, as most SFT data
    is, with a warning and the guess in the report."""
    data = recipe.data
    try:
        split = load_sft_split(data.dataset, data.train_split, data.train_file, config_name=data.dataset_config,
                               max_samples=1)  # fmt: skip
    except (TaskDataError, FileNotFoundError) as error:
        logger.warning("cannot read the SFT train data to tell chat from plain prompts (%s): assuming chat", error)
        return True, f"assumed: the SFT train data was not readable ({' '.join(str(error).split())[:120]})"
    chat = is_conversational(split)
    return chat, f"SFT train data {split.source} is {'chat messages' if chat else 'plain strings'}"
