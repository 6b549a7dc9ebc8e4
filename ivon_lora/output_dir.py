"""A command's output dir as a whole: the claim (`claim_output_dir`, before any expensive work), the lock (one
writer per dir), the staged swap (`staged_output_dir`: the complete old result or the complete new one, whatever
kill comes), and `ivon-lora train`'s run dir: what `overwrite_output_dir` may remove, its final files staged inside
it (`staged_final_files`), and what a reader of a run dir requires of it (`check_run_files`).

Recovery is an explicit step, never a side effect of reading: what a killed staged write leaves is cleaned up by the
next write into the same dir (`recover_output_dir`, `recover_final_files`), and a reader that meets an interrupted
final write of train refuses the dir, naming the call that completes it (`check_run_files`).

Named for the recipe key and the `--out` of every command, which is where a newcomer starts; one file written
atomically is `ivon_lora.fileio`, and the file names are `ivon_lora.filenames`. Every command that writes an output
dir claims it here and writes it through `staged_output_dir`: there is no second copy of these checks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager

from .errors import OutputDirLockedError, RunDirError, UsageError
from .fileio import dir_mode, file_mode, write_json_atomic
from .filenames import (
    CHECKPOINT_DIR_PATTERN,
    EVAL_DIR_PREFIX,
    FINAL_COMPLETE_NAME,
    FINAL_STAGING_NAME,
    LOCK_SUFFIX,
    METRICS_NAME,
    OUTPUT_MARKER_NAME,
    RECIPE_NAME,
    REPLACED_TAG,
    REPORT_NAME,
    RUN_FILES,
    STAGING_TAG,
)

logger = logging.getLogger(__name__)

# Test-only fault injection: IVON_LORA_TEST_KILL_AT=<point> makes the process SIGKILL itself at that point of a
# staged write (points: "staged", "aside", "swapped"; train's final files: "staged", "moving"), so tests can check
# what a kill -9 leaves behind.
KILL_AT_ENV = "IVON_LORA_TEST_KILL_AT"


def fault_point(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------------
# What an output dir may replace. Each command's output dir holds a marker naming the command that wrote it, and
# `--overwrite` replaces only an empty dir or one holding that command's marker: never a dir of the user's (their home,
# a repository, the working dir, a mount point), whatever --out names. Checked when the command claims its --out
# (`claim_output_dir`, before any expensive work) and again at the swap (`staged_output_dir`), so no caller can skip it.

OUTPUT_FORMAT_VERSION = 1  # the marker's format


def read_output_marker(directory: str) -> dict | None:
    """The marker of an output dir, or None if it has none (or not a readable one)."""
    path = os.path.join(directory, OUTPUT_MARKER_NAME)
    if not os.path.isfile(path) or os.path.islink(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_output_marker(directory: str, command: str) -> None:
    write_json_atomic(
        os.path.join(directory, OUTPUT_MARKER_NAME), {"command": command, "format": OUTPUT_FORMAT_VERSION}
    )


def _home_dirs() -> set[str]:
    import pwd

    homes = {os.path.expanduser("~")}
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a uid without a passwd entry (some containers)
        pass
    return {os.path.realpath(home) for home in homes if home}


def protected_reason(directory: str) -> str | None:
    """Why the dir `directory` may never be replaced by a command's output, or None. Judged by its real path."""
    real = os.path.realpath(directory)
    if not os.path.lexists(real):
        return None
    if real == os.path.realpath(os.sep):
        return "the root dir"
    if os.path.ismount(real):
        return "a mount point"
    for home in _home_dirs():
        if real == home or home.startswith(real + os.sep):
            return "your home dir" if real == home else f"an ancestor of your home dir {home}"
    cwd = os.path.realpath(os.getcwd())
    if real == cwd or cwd.startswith(real + os.sep):
        return "the current working dir" if real == cwd else f"an ancestor of the current working dir {cwd}"
    if os.path.lexists(os.path.join(real, ".git")):
        return "a repository (it holds .git)"
    return None


def _listing(directory: str, most: int = 5) -> str:
    names = sorted(os.listdir(directory))
    shown = ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {shown}"


def check_placeable(path: str, command: str) -> None:
    """Raise if the output dir of `ivon-lora COMMAND` may never go at `path`: an existing file, or a protected dir
    (`protected_reason`)."""
    real = os.path.realpath(path)
    if os.path.lexists(real) and not os.path.isdir(real):
        raise UsageError(
            f"--out {path!r} is a file, not a dir: choose a new dir for the output of `ivon-lora {command}`"
        )
    reason = protected_reason(real)
    if reason is not None:
        raise UsageError(f"--out {path!r} is {reason}: ivon-lora never replaces it; name a new dir for the output of "
                         f"`ivon-lora {command}`")  # fmt: skip


def check_replaceable(path: str, command: str) -> None:
    """Raise unless the output of `ivon-lora COMMAND` may take the place of `path`: absent, an empty dir, or a dir
    holding COMMAND's marker (`check_placeable` first)."""
    check_placeable(path, command)
    _check_marker(path, command)


def _check_marker(path: str, command: str) -> None:
    """Raise unless `path` (placeable) is absent, empty, or holds COMMAND's marker."""
    real = os.path.realpath(path)
    if not os.path.lexists(real) or not os.listdir(real):
        return
    marker = read_output_marker(real)
    if marker is None or marker.get("command") != command:
        written = f"`ivon-lora {marker.get('command')}`" if marker is not None else "no ivon-lora command"
        raise UsageError(f"--out {path!r} holds {_listing(real)}, written by {written}: --overwrite replaces only an "
                         f"earlier output of `ivon-lora {command}`; choose a new --out (or move the dir away yourself)")  # fmt: skip


def check_out_apart(out: str, inputs: dict[str, str | None]) -> None:
    """Refuse an output path that is, is inside, or contains an input (`inputs`: what -> path): replacing it would
    delete the input (or, inside it, part of a run another command reads)."""
    target = os.path.realpath(out)
    for what, directory in inputs.items():
        if directory is None:
            continue
        source = os.path.realpath(directory)
        relation = ("is" if target == source else "is inside" if target.startswith(source + os.sep)
                    else "contains" if source.startswith(target + os.sep) else None)  # fmt: skip
        if relation:
            raise UsageError(
                f"--out {out!r} {relation} the {what} {directory!r}, which it would replace: choose an "
                "--out outside every input run dir"
            )


def claim_output_dir(out: str, command: str, overwrite: bool, inputs: dict[str, str | None] | None = None) -> None:
    """Every check of the output dir of `ivon-lora COMMAND`, before any expensive work (then write it with
    `staged_output_dir(out, command)`): apart from its inputs, locked for this process (a second writer is refused),
    what a killed write left recovered, empty unless `overwrite`, and with `overwrite` replaceable
    (`check_replaceable`). A symlinked `out` is judged by its target."""
    check_out_apart(out, inputs or {})
    check_placeable(out, command)
    real = os.path.realpath(out)
    lock_output_dir(real)
    recover_output_dir(real)  # a result renamed aside by a killed swap is back before "is it empty?" is asked
    if os.path.isdir(real) and os.listdir(real):
        if not overwrite:
            raise FileExistsError(f"{out!r} exists and is not empty: choose another --out, or pass --overwrite")
        _check_marker(out, command)  # check_placeable ran above


def claim_resumable_output_dir(out: str, command: str, inputs: dict[str, str | None] | None = None) -> bool:
    """The claim of a command that writes its output dir in place as it goes, so that a later call resumes it
    (`ivon-lora compare`): the checks of `claim_output_dir`, but a non-empty dir is taken when it holds COMMAND's
    marker (any other is refused); the dir is created and marked now. Returns whether an earlier output is resumed."""
    check_out_apart(out, inputs or {})
    check_placeable(out, command)
    real = os.path.realpath(out)
    lock_output_dir(real)
    recover_output_dir(real)
    resumed = os.path.isdir(real) and bool(os.listdir(real))
    if resumed:
        _check_marker(out, command)  # check_placeable ran above
    os.makedirs(real, exist_ok=True)
    write_output_marker(real, command)
    return resumed


# ---------------------------------------------------------------------------------------------------------------
# One writer per output dir: an exclusive flock on a sibling file .NAME.lock (a sibling, not a file inside: a staged
# swap replaces the dir). The kernel drops the lock when its holder exits or dies, so a stale lock file blocks
# nobody; the holder removes the file on release. Held per process, reentrant, until released.

_held_locks: dict[str, int] = {}  # lock file path -> open file descriptor holding the flock


def _lock_path(path: str) -> str:
    parent, base = os.path.split(os.path.realpath(path))
    return os.path.join(parent, f".{base}.{LOCK_SUFFIX}")


def lock_output_dir(path: str) -> None:
    """Take the exclusive lock of output dir `path` for this process, or raise `OutputDirLockedError` (one line
    naming the holder) if another process holds it. A no-op if this process holds it already."""
    import fcntl
    import socket

    lock = _lock_path(path)
    if lock in _held_locks:
        return
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputDirLockedError(f"{path!r} is being written by {holder}: wait until it has finished, or "
                                       "choose another output dir") from None  # fmt: skip
        try:
            same_file = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # else a releasing holder removed the file after we opened it: lock the new one
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"ivon-lora process {os.getpid()} on {socket.gethostname()}".encode())
    _held_locks[lock] = fd


def release_output_dir(path: str | None = None) -> None:
    """Release this process's lock of output dir `path` (None: every lock it holds) and remove the lock file."""
    for lock in [_lock_path(path)] if path is not None else list(_held_locks):
        fd = _held_locks.pop(lock, None)
        if fd is None:
            continue
        try:
            os.remove(lock)  # while still holding it: a process that opened it before re-locks the new file
        except FileNotFoundError:
            pass
        os.close(fd)


def _leftovers(path: str, tag: str) -> list[str]:
    parent, base = os.path.split(os.path.realpath(path))
    prefix = f".{base}.{tag}-"
    return (
        sorted(os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix))
        if os.path.isdir(parent)
        else []
    )


def recover_output_dir(path: str) -> None:
    """Undo what a killed staged write left around `path`: a half-written staging dir is deleted; a previous
    result renamed aside comes back if nothing replaced it, and is deleted if the new one is in place."""
    for staging in _leftovers(path, STAGING_TAG):
        logger.warning("removing %s, left by an interrupted run", staging)
        shutil.rmtree(staging, ignore_errors=True)
    for old in _leftovers(path, REPLACED_TAG):
        if os.path.lexists(path):
            shutil.rmtree(old, ignore_errors=True)
        else:
            logger.warning("restoring %s from %s: the run that replaced it was interrupted", path, old)
            os.replace(old, path)


def _set_result_modes(directory: str) -> None:
    files_mode, dirs_mode = file_mode(), dir_mode()
    for root, dirs, files in os.walk(directory):
        os.chmod(root, dirs_mode)
        for name in files:
            os.chmod(os.path.join(root, name), files_mode)


@contextmanager
def staged_output_dir(path: str, command: str):
    """Yield a temporary sibling dir that replaces `path` (its real path: a symlink is followed) with the output of
    `ivon-lora COMMAND`, marked as such, only if the block succeeds and `path` is replaceable (`check_replaceable`).

    The swap: the old `path` is renamed aside, the staged dir renamed in, the old one deleted. A kill at any point
    leaves the complete old result or the complete new one (at `path`, or for the instant between the two renames,
    renamed aside); the next staged write into `path`, or `recover_output_dir`, restores or cleans it up.
    """
    path = os.path.realpath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    lock_output_dir(path)  # before recovering: another writer's staging dir is not a leftover (no-op if claimed)
    recover_output_dir(path)
    base = os.path.basename(path)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{base}.{STAGING_TAG}-")
    try:
        yield staging
        write_output_marker(staging, command)
        _set_result_modes(staging)
        check_replaceable(path, command)  # again at the swap: what replaces a dir never depends on the caller
        fault_point("staged")
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{base}.{REPLACED_TAG}-")  # a fresh name...
            os.rmdir(old)
            os.replace(path, old)  # ...that the old result takes
            fault_point("aside")
        os.replace(staging, path)
        fault_point("swapped")
        if old is not None:
            shutil.rmtree(old)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
        release_output_dir(path)


# The final artifacts of `ivon-lora train` go into a run dir that also holds its checkpoints, so they are staged
# inside it: written whole into .final.incomplete, marked complete by one rename to .final.complete, then moved in
# file by file, metrics.json last. A kill while staging leaves the previous files untouched (the staging dir is
# removed by the next write); a kill while moving is rolled forward by `recover_final_files`, which the next train
# into the dir calls, and which a reader never calls: it refuses the dir instead, naming that call (`check_run_files`).
# The adapter and posterior are tied by a hash, so no load pairs files of two runs.


def _move_final_files(complete: str, directory: str) -> None:
    names = sorted(os.listdir(complete), key=lambda name: name == METRICS_NAME)  # metrics.json last: the run is done
    for index, name in enumerate(names):
        os.replace(os.path.join(complete, name), os.path.join(directory, name))
        if index == 0:
            fault_point("moving")
    os.rmdir(complete)


def recover_final_files(directory: str, drop_incomplete: bool = False) -> None:
    """Finish what a killed `staged_final_files` left in `directory`: move a complete staged set in; with
    `drop_incomplete` (the next train into it, not a reader: a run may be writing it now), delete an incomplete one.

    The explicit recovery step: the next train into the dir calls it, and so can a user whose reader refused the
    dir (`check_run_files`); no reader calls it. It takes the dir's lock first, so it never moves files under a
    train that is still moving them (that train holds the lock: `OutputDirLockedError`)."""
    held = _lock_path(directory) in _held_locks
    lock_output_dir(directory)
    try:
        complete = os.path.join(directory, FINAL_COMPLETE_NAME)
        if os.path.isdir(complete):
            logger.warning(
                "completing the final files of %s, whose run was interrupted while moving them in", directory
            )
            _move_final_files(complete, directory)
        staging = os.path.join(directory, FINAL_STAGING_NAME)
        if drop_incomplete and os.path.isdir(staging):
            shutil.rmtree(staging)
    finally:
        if not held:
            release_output_dir(directory)


@contextmanager
def staged_final_files(directory: str, write: bool = True):
    """Yield `directory`/.final.incomplete, whose files replace their namesakes in `directory` when the block
    succeeds (see above). `write=False` (the non-saving ranks of a multi-process run) only yields the path."""
    staging = os.path.join(directory, FINAL_STAGING_NAME)
    if not write:
        yield staging
        return
    recover_final_files(directory, drop_incomplete=True)
    os.makedirs(staging, exist_ok=True)
    try:
        yield staging
        _set_result_modes(staging)
        complete = os.path.join(directory, FINAL_COMPLETE_NAME)
        os.replace(staging, complete)
        fault_point("staged")
        _move_final_files(complete, directory)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)


# ---------------------------------------------------------------------------------------------------------------
# `ivon-lora train`'s output dir, a run dir: what `overwrite_output_dir` removes, and what a reader requires of it.


def _written_by_a_run(directory: str, name: str) -> bool:
    import re

    path = os.path.join(directory, name)
    if os.path.isdir(path) and not os.path.islink(path):
        return bool(re.fullmatch(CHECKPOINT_DIR_PATTERN, name)) or (
            name.startswith(EVAL_DIR_PREFIX) and os.path.isfile(os.path.join(path, REPORT_NAME))
        )
    return name in RUN_FILES and os.path.isfile(path)


def check_overwritable(directory: str) -> None:
    """`overwrite_output_dir` replaces a previous ivon-lora run (a dir with its recipe.yaml), nothing else: a
    non-empty dir without one, and a protected dir (`protected_reason`), are refused before anything is removed."""
    reason = protected_reason(directory) if os.path.isdir(directory) and os.listdir(directory) else None
    if reason is not None:
        raise FileExistsError(f"output_dir {directory!r} is {reason}: overwrite_output_dir never replaces it; choose "
                              "a new output_dir")  # fmt: skip
    if os.path.isdir(directory) and os.listdir(directory) and not os.path.isfile(os.path.join(directory, RECIPE_NAME)):
        raise FileExistsError(
            f"output_dir {directory!r} is not an ivon-lora run dir (no {RECIPE_NAME}) and is not "
            "empty: overwrite_output_dir only replaces a previous run; choose another output_dir"
        )


def remove_run_artifacts(directory: str) -> list[str]:
    """Delete what a previous run wrote into `directory` (see RUN_FILES); returns the names removed."""
    check_overwritable(directory)
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if not _written_by_a_run(directory, name):
            continue
        path = os.path.join(directory, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        removed.append(name)
    return removed


def check_run_files(directory: str) -> None:
    """What every reader of a run dir requires of it, checked before it reads a file and without moving any.

    Its final files are all in place: a train interrupted while moving them in left the rest complete in
    .final.complete, and reading the dir would pair files of two runs; the refusal names the explicit recovery
    (`recover_final_files`). And the files ivon-lora reads or copies (RUN_FILES) are regular files, not symlinks
    or special files: a run dir is read as data, and a link in a dir someone sent you would pull a file from
    elsewhere (a key, a config) into the outputs that commands write."""
    if not os.path.isdir(directory):
        return
    if os.path.isdir(os.path.join(directory, FINAL_COMPLETE_NAME)):
        raise RunDirError(f"{directory}: `ivon-lora train` was interrupted while moving its final files in (the rest "
                          f"wait, complete, in {FINAL_COMPLETE_NAME}), so its files are of two runs: complete the move "
                          "with python -c \"from ivon_lora.output_dir import recover_final_files; "
                          f"recover_final_files({directory!r})\" (a train resumed into the dir does it too), then "
                          "read the dir again")  # fmt: skip
    bad = [name for name in sorted(RUN_FILES) if os.path.lexists(path := os.path.join(directory, name))
           and (os.path.islink(path) or not os.path.isfile(path))]  # fmt: skip
    if bad:
        what = "symbolic link" if os.path.islink(os.path.join(directory, bad[0])) else "special file"
        raise RunDirError(f"{directory}: {', '.join(bad)} {'is a' if len(bad) == 1 else 'are'} {what}"
                          f"{'' if len(bad) == 1 else '(s)'}, not a regular file: ivon-lora reads and copies only "
                          "regular files of a run dir; put a copy of the file in place of the link")  # fmt: skip
