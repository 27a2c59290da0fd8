"""Reading emolightning checkpoints: the one module that opens a .ckpt outside Lightning's own loading.

A `fit` checkpoint is a Lightning checkpoint dict: `hyper_parameters` (the EmotionClassifier's
arguments: encoder, label names, head; a distillation's hold its student's, distill.py),
`datamodule_hyper_parameters` (tokenizer and text options), `state_dict` (weights, and the tuned
thresholds) and the callbacks' and loops' states. Everything that reads one goes through here: the
CLI's checks of `--ckpt_path` (one read serves them all), a checkpoint without `--config`
(cli/standalone.py), export, ensemble members and manifests, distillation teachers and the report.
Each reader gets a one-paragraph ConfigError naming the file, not torch's zip reader's traceback.

It sits in models/ because `load_classifier` builds an EmotionClassifier; training, inference,
reporting and the CLI sit above it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..errors import ConfigError

# what export (and a model card) needs of a checkpoint's hyperparameters besides its head's weights
CLASSIFIER_KEYS = ("encoder", "label_names", "head", "encoder_config")


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at `path`, memory-mapped (tensors are read when used); raises what torch raises for an unreadable file."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def read_problem(path: str) -> tuple[dict | None, str | None]:
    """(the checkpoint dict, None), or (None, what makes `path` unusable as an emolightning checkpoint); reads the zip directory and the dict only."""
    size = os.path.getsize(path)
    if size == 0:
        return None, "the file is empty (0 bytes): a copy or a save that was cut short"
    if not zipfile.is_zipfile(path):
        return None, f"it is not a PyTorch checkpoint ({size} bytes, not a zip archive: cut short by an interrupted copy or download, or another kind of file)"
    try:
        ckpt = read_checkpoint(path)
    except Exception as err:  # a damaged member or a pickle that is not a checkpoint's
        return None, f"it could not be read ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return None, "it holds no `state_dict`: it is not a Lightning checkpoint"
    hparams = ckpt.get("hyper_parameters") or {}
    missing = [k for k in ("encoder", "label_names") if k not in hparams]
    if missing:
        return None, f"it is a checkpoint of another model (it lacks {', '.join(f'hyper_parameters.{k}' for k in missing)})"
    return ckpt, None


def checkpoint_problem(path: str) -> str | None:
    """What makes `path` unusable as an emolightning checkpoint, or None."""
    return read_problem(path)[1]


def check_checkpoint(path: str, option: str = "--ckpt_path") -> dict:
    """The checkpoint dict of the local file `path`; a one-paragraph ConfigError if it cannot be an emolightning checkpoint."""
    ckpt, problem = read_problem(path)
    if problem:
        raise ConfigError(
            f"The checkpoint '{path}' (option {option}) cannot be used: {problem}. Give a complete .ckpt written by `emolightning fit` "
            "(<run>/checkpoints/best-*.ckpt, or last.ckpt / `--ckpt_path last` to resume); if it was copied or downloaded, copy it again "
            "and compare its size with the original's."
        )
    return ckpt


def classifier_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint dict, checked to be an EmotionClassifier's with everything export needs (CLASSIFIER_KEYS, the head's weights)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"The checkpoint '{ckpt_path}' (option --ckpt_path) does not exist. Point it at a .ckpt written by `emolightning fit`, e.g. <run>/checkpoints/best-*.ckpt."
        )
    try:
        ckpt = read_checkpoint(path)
    except Exception as err:  # a truncated or foreign file; the reason is in the message
        raise ConfigError(
            f"Could not read the checkpoint '{ckpt_path}' ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Is it a complete .ckpt written by `emolightning fit`?"
        ) from err
    hparams, state = ckpt.get("hyper_parameters") or {}, ckpt.get("state_dict") or {}
    missing = [k for k in CLASSIFIER_KEYS if k not in hparams]
    if missing or "head.weight" not in state:
        raise ConfigError(
            f"The checkpoint '{ckpt_path}' is not an emolightning EmotionClassifier checkpoint (it lacks "
            f"{', '.join(f'hyper_parameters.{k}' for k in missing) or 'the head weights'}). Export a checkpoint written by `emolightning fit`."
        )
    return ckpt


def hyperparameters(ckpt: dict) -> tuple[dict, dict]:
    """(model, data module) hyperparameters of a checkpoint dict; empty dicts for one that holds none."""
    return dict(ckpt.get("hyper_parameters") or {}), dict(ckpt.get("datamodule_hyper_parameters") or {})


def label_names(ckpt: dict) -> list[str] | None:
    """The label names the checkpoint's model predicts, in its output order (None when it holds none)."""
    names = (ckpt.get("hyper_parameters") or {}).get("label_names")
    return list(names) if names else None


def load_classifier(path: str, device: torch.device | str = "cpu"):
    """The checkpoint's EmotionClassifier (a distilled student's too), in eval mode on `device`."""
    from .classifier import EmotionClassifier

    with torch.inference_mode(False):  # built inside `predict`'s inference mode, its parameters would be inference tensors
        model = EmotionClassifier.load_from_checkpoint(path, map_location="cpu")
    return model.to(device).eval()
