"""The ensemble manifest: the JSON file `emolightning ensemble` writes and `--ckpt_path ENSEMBLE.json` reads.

It names the member checkpoints (relative to the manifest, so a folder travels with its members),
their weights, tokenizers and max_length, the label names, and the thresholds tuned on the
members' averaged dev probabilities with their strategy. `read_manifest` checks all of it, and that
every member is a whole checkpoint, before any member is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..files import write_atomically
from ..models.checkpoints import checkpoint_problem

MANIFEST_FORMAT = "emolightning-ensemble"
BUILD_HINT = "Build it with `emolightning ensemble CKPT [CKPT ...] --data_dir DATA --out ensemble.json`."


@dataclass
class Member:
    checkpoint: str  # absolute path
    weight: float
    encoder: str  # its tokenizer
    max_length: int


@dataclass
class Manifest:
    path: str
    members: list[Member]
    label_names: list[str]
    thresholds: list[float]
    threshold_strategy: str
    threshold: float  # the fixed threshold of the `val/*` scores (0.5)
    keep_members_loaded: bool = False  # the EnsembleClassifier's, when the CLI builds it from the manifest


def read_manifest(path: str) -> Manifest:
    """The manifest at `path`, checked, its member paths made absolute (they are stored relative to the manifest)."""
    if not os.path.isfile(path):
        raise ConfigError(f"The ensemble manifest '{path}' (option --ckpt_path) does not exist. {BUILD_HINT}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}). An ensemble manifest is written by `emolightning ensemble`: rebuild it."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 JSON file. An ensemble manifest is written by `emolightning ensemble`: rebuild it.") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not data.get("members"):
        raise ConfigError(f"{path} is not an ensemble manifest (no `format: {MANIFEST_FORMAT}` or no members). {BUILD_HINT}")
    try:
        return manifest_of(path, data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a field missing or of the wrong kind: edited by hand, or another file
        what = f"the field {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {str(err)[:200]}"
        raise ConfigError(f"{path} is not a complete ensemble manifest ({what} missing or wrong). {BUILD_HINT}") from None


def manifest_of(path: str, data: dict) -> Manifest:
    """The Manifest that the JSON `data` of the manifest at `path` describes, its members checked to exist and to be whole checkpoints."""
    folder = os.path.dirname(os.path.abspath(path))
    members = []
    for entry in data["members"]:
        checkpoint = os.path.normpath(os.path.join(folder, entry["checkpoint"]))
        if not os.path.isfile(checkpoint):
            raise ConfigError(
                f"{path}: the member checkpoint '{entry['checkpoint']}' ({checkpoint}) does not exist. Member paths are relative to the manifest: "
                "move the manifest with its checkpoints, or rebuild it with `emolightning ensemble`."
            )
        if problem := checkpoint_problem(checkpoint):  # before any member is loaded, not in torch's zip reader halfway through
            raise ConfigError(
                f"{path}: the member checkpoint '{entry['checkpoint']}' ({checkpoint}) cannot be used: {problem}. Copy the member again from "
                "its run (compare the sizes), or rebuild the ensemble without it with `emolightning ensemble`."
            )
        members.append(Member(checkpoint, float(entry.get("weight", 1.0)), entry["encoder"], int(entry.get("max_length", 128))))
    labels, thresholds = list(data["label_names"]), [float(t) for t in data["thresholds"]]
    if len(thresholds) != len(labels):
        raise ConfigError(f"{path}: {len(thresholds)} thresholds for {len(labels)} labels. Rebuild it with `emolightning ensemble`.")
    strategy, threshold = data.get("threshold_strategy", "per_label"), float(data.get("threshold", 0.5))
    return Manifest(path, members, labels, thresholds, strategy, threshold, bool(data["keep_members_loaded"]))


def write_manifest(manifest: Manifest, extra: dict | None = None) -> None:
    """Write `manifest` to its path (member paths relative to it), with `extra` fields (the build's dev scores)."""
    folder = os.path.dirname(os.path.abspath(manifest.path))
    data = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "members": [
            {"checkpoint": os.path.relpath(m.checkpoint, folder), "weight": m.weight, "encoder": m.encoder, "max_length": m.max_length}
            for m in manifest.members
        ],
        "label_names": manifest.label_names,
        "threshold_strategy": manifest.threshold_strategy,
        "threshold": manifest.threshold,
        "thresholds": manifest.thresholds,
        "keep_members_loaded": manifest.keep_members_loaded,
        **(extra or {}),
    }
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(data, indent=1)
    write_atomically(manifest.path, lambda f: f.write(text), "w", needed=len(text.encode()), encoding="utf-8")


def is_manifest(path) -> bool:
    """Whether `--ckpt_path` names an ensemble manifest (a .json file) rather than one checkpoint."""
    return isinstance(path, str) and path.lower().endswith(".json")
