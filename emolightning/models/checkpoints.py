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

import contextvars
import glob
import os
import zipfile
from pathlib import Path

import torch

from ..errors import ConfigError

# where a run keeps its checkpoints under the folder a user names (`trainer.default_root_dir` or a logger's version
# folder): <root>/checkpoints (an explicit dirpath), lightning_logs/version_N/checkpoints (CSV/TensorBoard),
# <project>/<run id>/checkpoints (W&B)
CHECKPOINT_DIRS = ("checkpoints", "*/checkpoints", "*/*/checkpoints")

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


def tokenizer_name(ckpt: dict) -> str:
    """The tokenizer the checkpoint's model reads (its encoder's name or folder), as the checkpoint itself records it."""
    return str((ckpt.get("hyper_parameters") or {})["encoder"])


def load_classifier(path: str, device: torch.device | str = "cpu"):
    """The checkpoint's EmotionClassifier (a distilled student's too), in eval mode on `device`, with the checkpoint's own hyperparameters.

    It is built in an empty context: while LightningCLI instantiates a model, Lightning hands the hyperparameters of
    that model to every `save_hyperparameters()` called inside it, so a classifier loaded within (a distillation's
    teacher) would otherwise record the outer model's encoder and label names as its own.
    """
    from .classifier import EmotionClassifier

    def load():
        with torch.inference_mode(False):  # built inside `predict`'s inference mode, its parameters would be inference tensors
            return EmotionClassifier.load_from_checkpoint(path, map_location="cpu")

    model = contextvars.Context().run(load)
    return model.to(device).eval()


def best_checkpoint_of_run(folder: str | Path, option: str = "--ckpt_path") -> str:
    """The best checkpoint (`best-*.ckpt`) of the run folder `folder`: the folder `emolightning fit` printed
    (`<root>/lightning_logs/version_N`), its `checkpoints/` folder, or the `trainer.default_root_dir` of one run.

    A checkpoint folder holds one best checkpoint; where an older one is still beside it (a run resumed
    by an earlier version), the newest is the best, since a best checkpoint is only written when it beats
    the one before. Best checkpoints in several folders are several runs: a one-paragraph ConfigError
    lists them, as it does when there is none.
    """
    folder = Path(folder)
    patterns = [folder / "best-*.ckpt", *(folder / d / "best-*.ckpt" for d in CHECKPOINT_DIRS)]
    found = sorted({Path(p) for pattern in patterns for p in glob.glob(str(pattern))})
    if not found:
        raise ConfigError(
            f"The run folder '{folder}' (option {option}) holds no best checkpoint (no best-*.ckpt in it, in its checkpoints/ "
            "or in lightning_logs/version_*/checkpoints/). Give the folder of a run that `emolightning fit` completed at least one "
            "validation epoch of, or the .ckpt file itself."
        )
    runs = sorted({p.parent for p in found})
    if len(runs) > 1:
        listing = ", ".join(f"'{run}'" for run in runs)
        raise ConfigError(
            f"The folder '{folder}' (option {option}) holds the best checkpoints of {len(runs)} runs ({listing}). Name one of "
            "them: the run's own folder (e.g. lightning_logs/version_N) or its .ckpt file."
        )
    return str(max(found, key=lambda p: (p.stat().st_mtime, p.name)))


def checkpoint_path(path: str | Path, option: str = "--ckpt_path") -> str:
    """`path` itself for a file (or anything that is not a local folder), else the best checkpoint of that run folder."""
    return best_checkpoint_of_run(path, option) if os.path.isdir(path) else str(path)
