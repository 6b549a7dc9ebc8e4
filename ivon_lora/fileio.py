"""One file of a run dir or an output dir, written atomically and read back checked; each reader beside its writer
(JSON: `write_json_atomic` / `read_json`, safetensors: `write_tensors` / `read_tensors`).

Named for what it does to a single file; a whole output dir (the claim, the lock, the staged swap, train's final
files) is `ivon_lora.output_dir`, and the names of the files are `ivon_lora.filenames`. Low in the package (it
imports only errors): the posterior, which everything above loads, writes and reads through it.

A writer never leaves half a file where a reader looks: it writes a temporary sibling and renames it into place. A
reader names the file in its errors: a missing file is a FileNotFoundError, a damaged one a RunDirError.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable

from .errors import RunDirError


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a result file: what open() gives under the user's umask (mkstemp's 0600 otherwise)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode of a result dir: what mkdir gives under the user's umask (mkdtemp's 0700 otherwise)."""
    return 0o777 & ~_umask()


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary sibling of `path`, then rename it onto `path` (no partial file is seen)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-" + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing")


# ---------------------------------------------------------------------------------------------------------------
# JSON


def standard_json(value):
    """`value` with every NaN or infinite float as None (null): JSON has no NaN or Infinity, which Python's json
    writes by default and strict readers (JavaScript's JSON.parse, jq, most other languages) refuse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: standard_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [standard_json(item) for item in value]
    return value


def json_line(row: dict, **dump_options) -> str:
    """One line of a .jsonl file, standard JSON (`standard_json`)."""
    return json.dumps(standard_json(row), allow_nan=False, **dump_options) + "\n"


def write_json_atomic(path: str, payload: dict, **dump_options) -> None:
    """Write `payload` as standard JSON (`standard_json`) to `path`, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(standard_json(payload), f, indent=2, allow_nan=False, **dump_options)

    atomic_write(path, write)


def read_json(path: str) -> dict:
    """The JSON object in `path`."""
    _require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path}: not valid JSON ({error}); the file is damaged: restore or re-create it") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# safetensors


def write_tensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write `tensors` (name -> tensor) to the safetensors file `path`, atomically."""
    from safetensors.torch import save_file

    contiguous = {key: tensor.contiguous() for key, tensor in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def read_tensors(path: str) -> dict:
    """The tensors of a safetensors file, each finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _require_file(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise RunDirError(f"{path}: not a readable safetensors file ({error}); it is truncated or damaged: restore "
                          "it or re-create the run") from None  # fmt: skip
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise RunDirError(f"{path}: tensor {key} holds NaN or inf values, which no finished ivon-lora command writes "
                              "(training stops when it diverges, merge refuses a non-finite result): the file is "
                              "damaged or was written elsewhere; restore or re-create it")  # fmt: skip
    return tensors
