"""What a run records for `emolightning report` (report.py), beyond Lightning's own logs.

- `RunClock` logs each training epoch's wall time and throughput to every logger:
  `train/epoch_time_s` (the epoch, its validation included), `train/samples_per_sec` (training
  examples per second over all devices, validation time left out) and `train/elapsed_s` (since
  the start of training).
- `BestValidationOutputs` saves the validation probabilities and gold labels of the best epoch so
  far (by the monitored checkpoint's metric, `val/jaccard` by default), with the thresholds tuned
  on them, as `val_probs.npz` beside the best checkpoint: rewritten once per new best, so it always
  belongs to the best checkpoint. The report draws each label's F1 against its threshold from it.
- `KeepTestScores` keeps the scores of `emolightning test --ckpt_path CKPT` as `test_scores.json` beside
  CKPT (or beside an ensemble's manifest; an evaluation opens no log folder of its own), so the report's row of that run shows them.
"""

from __future__ import annotations

import json
import os
import time
import zipfile

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ..errors import DataError
from ..files import write_atomically
from ..outputs import Classifier

VAL_PROBS_FILE = "val_probs.npz"
TEST_SCORES_FILE = "test_scores.json"


def batch_size(batch) -> int:
    """Examples in a batch: a dict of tensors (the data module's), a tensor, or a list/tuple of them."""
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first)


class RunClock(Callback):
    """Logs `train/epoch_time_s`, `train/samples_per_sec` and `train/elapsed_s` after each training epoch."""

    def __init__(self):
        self.start = self.epoch_start = None
        self.samples = 0
        self.val_seconds = 0.0
        self.val_start = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start, self.samples, self.val_seconds = time.perf_counter(), 0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self.samples += batch_size(batch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.val_start is not None and self.epoch_start is not None:  # not the sanity check before training
            self.val_seconds += time.perf_counter() - self.val_start
        self.val_start = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epoch_start is None:
            return
        now = time.perf_counter()
        epoch = now - self.epoch_start
        training = max(epoch - self.val_seconds, 1e-9)
        # every rank sees an equal share (DistributedSampler pads the last one), so rank 0's count x world size
        samples = self.samples * trainer.world_size
        # under DDP the slowest rank sets the pace: the longest times, the lowest throughput
        for key, value, reduce in (
            ("train/epoch_time_s", epoch, "max"),
            ("train/elapsed_s", now - self.start, "max"),
            ("train/samples_per_sec", samples / training, "min"),
        ):
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx=reduce)


def monitored_checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The first ModelCheckpoint that monitors a metric (the CLI's `checkpoint`), or None."""
    return next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)


def is_new_best(current: float, best: float | None, mode: str) -> bool:
    """Whether `current` improves on `best` the way ModelCheckpoint counts it (strictly)."""
    if best is None or np.isnan(best):
        return not np.isnan(current)
    return current > best if mode == "max" else current < best


def save_val_probs(path: str, probs: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor, label_names: list[str], epoch: int, step: int) -> None:
    """Write the npz atomically (files.write_atomically)."""
    write_atomically(
        path,
        lambda f: np.savez_compressed(
            f,
            probs=probs.detach().float().cpu().numpy(),
            target=target.detach().cpu().numpy().astype(np.uint8),
            thresholds=thresholds.detach().float().cpu().numpy(),
            label_names=np.array(list(label_names)),
            epoch=np.array(epoch),
            step=np.array(step),
        ),
        needed=probs.numel() * 5 + thresholds.numel() * 4,  # uncompressed: float32 probabilities, uint8 labels
    )


def load_val_probs(path: str) -> dict:
    """`val_probs.npz` as a dict: probs (N, L), target (N, L), thresholds (L,), label_names, epoch, step."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
        out["label_names"] = [str(n) for n in out["label_names"]]
        out["epoch"], out["step"] = int(out["epoch"]), int(out["step"])
        missing = [k for k in ("probs", "target", "thresholds") if k not in out]
        if missing:
            raise KeyError(", ".join(missing))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # cut short, empty, another file, or fields missing
        what = f"it lacks {err}" if isinstance(err, KeyError) else f"it is not a complete .npz archive ({type(err).__name__}: {str(err)[:120]})"
        raise DataError(
            f"The validation outputs '{path}' cannot be read: {what}. They are written by `emolightning fit` at each new best epoch and "
            "cannot be rebuilt without training again; nothing was changed. Copy the file again from the original run if there is one, "
            "or move it out of the checkpoints folder (the report then leaves out the F1-against-threshold figure and the tuned per-label F1)."
        ) from None
    return out


class BestValidationOutputs(Callback):
    """Saves `val_probs.npz` (validation probabilities, gold labels, tuned thresholds) beside the best checkpoint, once per new best epoch.

    It reads the module's `epoch_outputs("val")` (outputs.Classifier, which EmotionClassifier and
    EnsembleClassifier provide); other LightningModules are left alone.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # callbacks' on_validation_end run after the module logged the epoch's scores, and before
        # the ModelCheckpoint (Lightning runs checkpoint callbacks last), which still holds the old best
        # `validate` has no best epoch; a fast_dev_run keeps no checkpoint to put this beside
        if trainer.sanity_checking or trainer.fast_dev_run or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        outputs = pl_module.epoch_outputs("val") if isinstance(pl_module, Classifier) else None
        if outputs is None:
            return
        checkpoint = monitored_checkpoint(trainer)
        if checkpoint is None or checkpoint.dirpath is None:
            return
        current = trainer.callback_metrics.get(checkpoint.monitor)
        best = checkpoint.best_model_score
        if current is None or not is_new_best(float(current), None if best is None else float(best), checkpoint.mode):
            return
        path = os.path.join(checkpoint.dirpath, VAL_PROBS_FILE)
        save_val_probs(path, outputs.probs, outputs.target, outputs.thresholds, outputs.label_names, trainer.current_epoch, trainer.global_step)


class KeepTestScores(Callback):
    """After `test` of a checkpoint file, its `test/*` scores in `test_scores.json` in the checkpoint's folder (rank 0).

    {"checkpoint": file name, "scores": {"test/jaccard": ..., "test/tuned/jaccard": ..., ...}}; a later test replaces it.
    The checkpoint is `trainer.ckpt_path`, or the file the module says it was built from (`EpochOutputs.source`: an ensemble's manifest).
    """

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        outputs = pl_module.epoch_outputs("test") if isinstance(pl_module, Classifier) else None
        ckpt = outputs.source if outputs is not None and outputs.source else trainer.ckpt_path
        if not trainer.is_global_zero or trainer.fast_dev_run or not ckpt or not os.path.isfile(ckpt):  # one batch's scores are no test scores
            return
        scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if not scores:
            return
        path = os.path.join(os.path.dirname(os.path.abspath(ckpt)), TEST_SCORES_FILE)
        write_atomically(path, lambda f: json.dump({"checkpoint": os.path.basename(ckpt), "scores": scores}, f, indent=2), "w", encoding="utf-8")
