"""Every file name a run dir holds, the posterior's format version, and how files are written (a leaf module).

A run dir (or a checkpoint-N inside it, or a pruned copy) is a PEFT adapter dir plus the posterior and results:

    adapter_config.json, adapter_model.safetensors   the PEFT adapter = the posterior mean (PEFT's own names)
    posterior.safetensors, posterior_config.json     per-weight variance under the adapter's keys, and metadata
    recipe.yaml                                      the resolved recipe (train writes it; a checkpoint reads its parent's)
    metrics.json, predictions.jsonl                  the final evaluation of `ivon-lora train`
    diagnostics.json, diagnostics.png                posterior diagnostics (`ivon-lora train`, `ivon-lora inspect`)
    README.md                                        the model card of `ivon-lora export`
    eval.json, eval.md, tradeoff.png, ...            `ivon-lora eval`'s output dir

PEFT's two names equal `peft.utils.constants.CONFIG_NAME` / `SAFETENSORS_WEIGHTS_NAME` (tests/test_artifacts.py
holds them equal). They are not imported from peft: importing peft imports bitsandbytes when it is installed,
which costs seconds and prints kernel warnings on machines that never asked for a quantized base.

The writers at the end (one atomic file writer, one staged output dir) are every write into a run dir.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager

ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft.utils.constants.CONFIG_NAME
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft.utils.constants.SAFETENSORS_WEIGHTS_NAME
POSTERIOR_WEIGHTS_NAME = "posterior.safetensors"
POSTERIOR_CONFIG_NAME = "posterior_config.json"
# The posterior format this version writes; older ones in COMPATIBLE_FORMAT_VERSIONS load with a warning.
FORMAT_VERSION = 2
COMPATIBLE_FORMAT_VERSIONS = (1, 2)

RECIPE_NAME = "recipe.yaml"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.jsonl"  # per-example probabilities of train's final evaluation
MODEL_CARD_NAME = "README.md"
DIAGNOSTICS_NAME = "diagnostics.json"  # posterior diagnostics (train's end, `ivon-lora inspect --out`)
DIAGNOSTICS_PLOT_NAME = "diagnostics.png"
EXPORT_POSTERIOR_DIR = "posterior"  # export: the adapter and posterior files beside the merged model
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"

REPORT_NAME = "eval.json"
TABLE_NAME = "eval.md"
TRADEOFF_PLOT_NAME = "tradeoff.png"


def task_file_stem(task: str) -> str:
    """A task (or run label) name usable in a file name (MMLU subjects are written mmlu:subject)."""
    return task.replace(":", "-").replace("/", "-")


def predictions_file_name(task: str, run: str) -> str:
    return f"predictions-{task_file_stem(task)}-{task_file_stem(run)}.jsonl"


def reliability_plot_name(task: str) -> str:
    return f"reliability-{task_file_stem(task)}.png"


def selective_plot_name(task: str) -> str:
    return f"selective-{task_file_stem(task)}.png"


# Files of a run dir that describe one particular adapter and posterior, so a derived dir must not copy them.
RESULT_FILES = (ADAPTER_WEIGHTS_NAME, POSTERIOR_WEIGHTS_NAME, POSTERIOR_CONFIG_NAME, METRICS_NAME, PREDICTIONS_NAME,
                MODEL_CARD_NAME, DIAGNOSTICS_NAME, DIAGNOSTICS_PLOT_NAME)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Writing into a run dir: one file atomically, or a whole output dir staged and renamed into place. Here, in the
# leaf, because both the posterior (which rundir.py loads) and the commands write; a reader never sees half a file.


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary sibling of `path`, then rename it onto `path` (no partial file is seen)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-" + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, payload: dict, **dump_options) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, **dump_options)

    atomic_write(path, write)


def check_new_output_dir(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
        raise FileExistsError(f"{path!r} exists and is not empty: choose another --out, or pass --overwrite")


@contextmanager
def staged_output_dir(path: str):
    """Yield a temporary sibling dir that replaces `path` only if the block succeeds."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.incomplete-")
    try:
        yield staging
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
