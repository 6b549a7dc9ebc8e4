"""Task registry: each task is data (where its records live, which splits, how a record becomes a prompt).

Two kinds (`task.kind`): multiple-choice tasks (`Task`, examples `ChoiceExample`, loaded by `load_split`) and
generative tasks (`GenerativeTask`, examples `GenerativeExample` with reference answers and a correctness judge
from `judges`, loaded by `load_generative_split`).

Records load from the Hugging Face Hub with `datasets.load_dataset`, or from local json/jsonl/parquet/csv files
(a file or a directory of them) in the same schema (`data_files`), or, for the built-in synthetic task, from a
deterministic generator. One module per suite family holds its builder and `TASKS`; `protocols` holds the
evaluation presets (which questions are kept, what they are scored over); `loading` turns a split into
`ChoiceExample`s and reports what the protocol's filters dropped.

| task | Hub dataset (config) | splits | notes |
|---|---|---|---|
| arc_challenge, arc_easy | allenai/ai2_arc (ARC-Challenge / ARC-Easy) | train, validation, test | 3-5 choices |
| openbookqa | allenai/openbookqa (main) | train, validation, test | question_stem |
| winogrande_{xs,s,m,l,xl,debiased} | allenai/winogrande | train, validation, test* | answers " 1"/" 2" |
| boolq | google/boolq | train, validation | answers " False"/" True" |
| piqa | ybisk/piqa (parquet branch) | train, validation, test* | 2 choices |
| siqa | allenai/social_i_qa (parquet branch) | train, validation | 3 choices |
| hellaswag | Rowan/hellaswag | train, validation, test* | 4 endings |
| commonsense_qa | tau/commonsense_qa | train, validation, test* | 5 choices |
| mmlu_<subject> | cais/mmlu (<subject>) | test, validation, dev | OOD sets, 4 choices |
| synthetic | generator | train, validation, test | offline demo |
| triviaqa (generative) | mandarjoshi/trivia_qa (rc.nocontext) | train, validation | exact match, any alias |
| nq_open (generative) | google-research-datasets/nq_open (nq_open) | train, validation | exact match, any answer |
| gsm8k (generative) | openai/gsm8k (main) | train, test | numeric match of the final number |

(*) unlabelled on the Hub: its examples have gold -1, which evaluation refuses.

A generated task whose generator makes splits of any size (synthetic, wordfacts, wordfacts_clean, antonyms,
wordpick) takes a larger (or smaller) test split by name, `NAME:test_size=N` (e.g. the recipe key
`dataset: wordfacts_clean:test_size=1000`, or eval's `--task`): the first records are the default split's, the
other splits do not change, and the name records the size in every report.
"""

from .arc import arc_example
from ..errors import RecordError, TaskDataError
from .base import GENERATIVE, LETTERS, MC_TEMPLATE, MULTIPLE_CHOICE, Task
from .generative import GenerativeExample, GenerativeTask
from .judges import JUDGES, Judge, get_judge
from .loading import (
    LoadedSplit,
    load_examples,
    load_generative_split,
    load_records,
    load_split,
    resolve_data_files,
)
from .mmlu import MMLU_SUBJECTS
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS, Protocol, get_protocol
from .registry import TASKS, get_task, task_names

__all__ = [
    "DEFAULT_PROTOCOL",
    "GENERATIVE",
    "JUDGES",
    "LETTERS",
    "MC_TEMPLATE",
    "MMLU_SUBJECTS",
    "MULTIPLE_CHOICE",
    "PROTOCOLS",
    "TASKS",
    "GenerativeExample",
    "GenerativeTask",
    "Judge",
    "LoadedSplit",
    "Protocol",
    "RecordError",
    "Task",
    "TaskDataError",
    "arc_example",
    "get_judge",
    "get_protocol",
    "get_task",
    "load_examples",
    "load_generative_split",
    "load_records",
    "load_split",
    "resolve_data_files",
    "task_names",
]
