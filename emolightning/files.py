"""Files emolightning writes and reads back: complete or absent, and a named one-paragraph error when the disk says no.

`write_atomically` (or `atomic_open`) is the one way emolightning writes a file: into a temporary file in the final
file's own folder, fsync, then `os.replace` (a rename within one folder is atomic, so a reader sees
the old file or the new one, never a part). A full disk, a read-only folder or a missing permission
removes the temporary file, leaves the previous file as it was, and becomes a `StorageError` that
names the path and the bytes it needed. A disk that fills does not always say ENOSPC: torch.save's
zip writer, for one, raises `RuntimeError: [enforce fail at inline_container.cc] unexpected pos`
when its writes come up short. So any failure of a write, whatever it raised, is a full disk when
the folder's free space is short at that moment (`space_is_short`). A folder is built in `folder_beside` its target and renamed
into place. A local model folder (an export, a save_pretrained copy) is
checked the same way before anything loads it (checkpoints: models/checkpoints.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from contextlib import contextmanager

from .errors import ConfigError, StorageError

REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "there is no permission to write there",
    errno.EPERM: "there is no permission to write there",
}


# less free space than this in the folder of a write that failed: the disk is full, whatever the writer raised
SHORT_SPACE = 1 << 20


def free_bytes(folder: str) -> int | None:
    """The bytes an unprivileged process may still write in `folder`'s file system (statvfs), or None where it cannot be asked."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def space_is_short(path: str, needed: int | None = None, pending: str | None = None) -> bool:
    """Whether the file system of `path` is (nearly) full: under SHORT_SPACE free, or less than `needed` bytes free once the
    partial file `pending` (the temporary file of a failed write, about to be removed) is gone."""
    free = free_bytes(os.path.dirname(os.path.abspath(path)))
    if free is None:
        return False
    partial = os.path.getsize(pending) if pending and os.path.isfile(pending) else 0
    return free < SHORT_SPACE or bool(needed and free + partial < needed)


def storage_error(path: str, err: BaseException, needed: int | None = None, reason: str | None = None) -> StorageError:
    """The one-paragraph error for a write of `path` that failed with `err` (`reason`: what it means, else read from its errno)."""
    errnum = getattr(err, "errno", None)
    reason = reason or REASONS.get(errnum) or f"{getattr(err, 'strerror', None) or err}"
    cause = f"OSError errno {errnum}" if isinstance(err, OSError) and errnum else f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"
    folder = os.path.dirname(os.path.abspath(path))
    free = free_bytes(folder)
    size = f" It needs about {needed / 1e6:.1f} MB free there{'' if free is None else f'; {free / 1e6:.1f} MB are'}." if needed else ""
    return StorageError(
        f"Could not write '{path}': {reason} ({cause}).{size} Nothing was written under that name; a previous "
        f"file of that name is unchanged. Free space or choose a writable folder ('{folder}', or the option that sets it, "
        "e.g. --trainer.default_root_dir, --output, data.cache_dir) and run again."
    )


def temporary_name(path: str) -> str:
    """A hidden file beside `path`, unique per host and process (ranks of one job may share the folder)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{socket.gethostname()}.{os.getpid()}.tmp")


def write_failure(path: str, err: BaseException, needed: int | None, full: bool) -> StorageError | None:
    """The StorageError a failed write of `path` stands for: the disk's or the folder's errno, or any error while the disk is
    `full`; None for anything else (a bug, which keeps its traceback)."""
    if isinstance(err, OSError) and err.errno in REASONS:
        return storage_error(path, err, needed)
    return storage_error(path, err, needed, REASONS[errno.ENOSPC]) if full else None


@contextmanager
def atomic_open(path: str, mode: str = "wb", needed: int | None = None, **open_args):
    """`open(...)` on a temporary file that becomes `path` when the block ends without an error (see the module doc)."""
    path = str(path)
    tmp = temporary_name(path)
    try:
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except Exception as err:
        full = space_is_short(path, needed, pending=tmp)  # asked before the partial file is removed
        remove_quietly(tmp)
        if (named := write_failure(path, err, needed, full)) is not None:
            raise named from err
        raise  # not the disk's or the folder's fault: a bug keeps its traceback
    except BaseException:
        remove_quietly(tmp)
        raise


@contextmanager
def named_write_errors(path: str, needed: int | None = None):
    """Turn a full disk / read-only folder / missing permission while writing `path` into its StorageError (for files written piecemeal)."""
    try:
        yield
    except Exception as err:
        if (named := write_failure(str(path), err, needed, space_is_short(str(path), needed))) is not None:
            raise named from err
        raise


def write_atomically(path: str, write: Callable, mode: str = "wb", needed: int | None = None, **open_args) -> None:
    """`write(f)` into a temporary file that then becomes `path` (see `atomic_open`)."""
    with atomic_open(path, mode, needed, **open_args) as f:
        write(f)


@contextmanager
def folder_beside(target: str, tag: str = "partial"):
    """A new hidden folder beside `target`, removed with whatever is left in it when the block ends.

    On the target's own file system, so what is built in it can be renamed into place atomically
    (`os.replace`), as `atomic_open` does for one file; unique per process (`tempfile.mkdtemp`).
    """
    parent, name = os.path.split(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{name}.{tag}-", dir=parent)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def give_umask_modes(folder: str) -> None:
    """Give the files and folders under `folder` the modes new ones get from the umask (0666 and 0777 less the umask).

    Some writers create private files (safetensors' `save_file` and `tempfile.mkstemp` make 0600, `mkdtemp` 0700
    folders): what emolightning builds in a `folder_beside` and renames into place must read like any other file.
    """
    umask = os.umask(0o022)
    os.umask(umask)  # reading the umask means setting it: put it back at once
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def safetensors_problem(path: str) -> str | None:
    """What makes a .safetensors file unreadable, or None: read from its header, which says how long the file must be."""
    name, size = os.path.basename(path), os.path.getsize(path)
    if size < 8:
        return f"{name} is {size} bytes, too short for a safetensors file"
    with open(path, "rb") as f:
        header_bytes = int.from_bytes(f.read(8), "little")
        if 8 + header_bytes > size:
            return f"{name} is cut short ({size:,} bytes, less than its own header)"
        try:
            header = json.loads(f.read(header_bytes))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            return f"{name} is not a safetensors file (its header cannot be read)"
    if 8 + header_bytes + end > size:
        return f"{name} is cut short ({size:,} of {8 + header_bytes + end:,} bytes)"
    return None


def model_folder_problem(folder: str) -> str | None:
    """What makes a local model folder (save_pretrained's, an `emolightning export`) unloadable, or None: config.json and whole weights."""
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return "it has no config.json"
    try:
        with open(config, encoding="utf-8") as f:
            json.load(f)
    except ValueError:
        return "its config.json is not valid JSON (cut short or damaged)"
    names = sorted(os.listdir(folder))
    weights = [n for n in names if n.endswith(".safetensors")]
    if not weights and not any(n.endswith(".bin") and n.startswith("pytorch_model") for n in names):
        return "it holds no weights (model.safetensors)"
    for name in weights:
        if problem := safetensors_problem(os.path.join(folder, name)):
            return problem
    return None


def check_model_folder(folder: str, option: str) -> None:
    """Raise a one-paragraph ConfigError if the local model folder `folder` cannot be loaded (see model_folder_problem)."""
    if problem := model_folder_problem(folder):
        raise ConfigError(
            f"The model folder '{folder}' (option {option}) cannot be used: {problem}. A folder copied or downloaded in part, or "
            "written on a disk that filled, cannot be repaired: copy it again from the original (compare the sizes), or write it "
            "again (`emolightning export`, or `save_pretrained`)."
        )
