"""What `emolightning fit` says at the end: where the run went, its best checkpoint and scores, what to run next.

    Run folder:      runs/quickstart/lightning_logs/version_0 (config.yaml, metrics.csv, checkpoints/)
    Best checkpoint: runs/quickstart/lightning_logs/version_0/checkpoints/best-3-92.ckpt
      val/jaccard 0.xxxx  val/f1_micro 0.xxxx  val/f1_macro 0.xxxx (epoch 3, threshold 0.5)
      val/tuned/jaccard 0.xxxx  ... (at its tuned thresholds, which test and predict use)
    Next:
      emolightning test --config .../config.yaml --ckpt_path .../best-3-92.ckpt
      emolightning predict --config .../config.yaml --ckpt_path .../best-3-92.ckpt --data.predict_file FILE --output predictions.txt

`ValHistory` keeps each validation's `val/*` scores, so the block shows those of the epoch whose
checkpoint was kept as best (ModelCheckpoint replaces its best only on a strictly better score,
so the first epoch that reached it is the one saved).
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING

from lightning.pytorch.callbacks import Callback

if TYPE_CHECKING:
    from ..data.datamodule import EmotionDataModule

SHOWN = ["jaccard", "f1_micro", "f1_macro"]


class ValHistory(Callback):
    """Records the `val/*` scores (no per-label ones) of every validation, with its epoch."""

    def __init__(self):
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and "/f1/" not in k and v.numel() == 1}
        self.history.append({**scores, "epoch": trainer.current_epoch})


def shown_path(path: str) -> str:
    """`path` relative to the current directory when it lies below it, shell-quoted."""
    relative = os.path.relpath(path)
    return shlex.quote(path if relative.startswith("..") else relative)


def has_test_split(data: EmotionDataModule) -> bool:
    """Whether the run's data names a test split (a file, or one in data_dir or on the Hub), so that `test` needs no file option."""
    try:
        return data.split_source("test") is not None
    except Exception:  # e.g. a data_dir that is gone: `test` will say so itself
        return True


def closing_block(trainer, history: list[dict[str, float]], report: str | None = None, test_split: bool = True) -> str:
    """The block above; `test_split`: whether the data names a test split (`has_test_split`), else the test command asks for a file."""
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback is not None else ""
    if best:
        run_dir = os.path.dirname(os.path.dirname(best))
    else:
        run_dir = trainer.log_dir or trainer.default_root_dir
    config = os.path.join(run_dir, "config.yaml")
    contents = [name for name in ("config.yaml", "metrics.csv", "checkpoints") if os.path.exists(os.path.join(run_dir, name))]
    lines = [f"Run folder:      {shown_path(run_dir)}" + (f" ({', '.join(contents)})" if contents else "")]
    if not best:
        lines.append("No checkpoint was kept (no validation ran, or `checkpoint` is switched off): nothing to test or predict with.")
        return "\n".join(lines)
    lines.append(f"Best checkpoint: {shown_path(best)}")
    score = None if callback.best_model_score is None else float(callback.best_model_score)
    entry = next((h for h in history if score is not None and h.get(callback.monitor) == score), None)
    if entry is not None:
        fixed = "  ".join(f"val/{k} {entry[f'val/{k}']:.4f}" for k in SHOWN if f"val/{k}" in entry)
        tuned = "  ".join(f"val/tuned/{k} {entry[f'val/tuned/{k}']:.4f}" for k in SHOWN if f"val/tuned/{k}" in entry)
        lines.append(f"  {fixed} (epoch {entry['epoch']}, threshold 0.5)")
        if tuned:
            lines.append(f"  {tuned} (at its tuned thresholds, which test and predict use)")
    elif score is not None:
        lines.append(f"  {callback.monitor} {score:.4f}")
    if report:
        lines.append(report)
    config_arg = shown_path(config) if os.path.exists(config) else "CONFIG.yaml"
    test_file = "" if test_split else " --data.test_file TEST_FILE"
    lines += [
        "Next:",
        f"  emolightning test --config {config_arg} --ckpt_path {shown_path(best)}{test_file}",
        f"  emolightning predict --config {config_arg} --ckpt_path {shown_path(best)} --data.predict_file FILE --output predictions.txt",
    ]
    return "\n".join(lines)
