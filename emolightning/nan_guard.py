"""Numerical faults: stop at the first NaN or infinite loss or gradient, before it reaches the weights.

A NaN loss left alone turns every weight into NaN at the next optimizer step, and every checkpoint
written after it is worthless (`last.ckpt` included, which a resume would then start from).
`FiniteLossGuard` checks the loss before backward and, in full precision, the gradients before the
optimizer step, and stops the run with a TrainingError that names the step, the batch and its rows
and says where the last good checkpoint is. Checkpoints are written after the optimizer step, so
none is written for the bad step.

fp16 (`precision: 16-mixed`, GPU only in Lightning) is different for gradients: the GradScaler
multiplies the loss by a large factor, so inf gradients are expected now and then; it skips those
optimizer steps and lowers the factor, without stopping. The gradient check is therefore off
whenever a scaler is active; the loss check (on a float32 loss) is on in every precision.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from .compat import last_global_step_saved
from .errors import TrainingError


class FiniteLossGuard(Callback):
    """Stops training at the first NaN/inf training loss (or, without a grad scaler, gradient)."""

    def __init__(self):
        self._batch, self._batch_idx = None, -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._check(trainer, bool(torch.isfinite(loss.detach()).all()), f"the training loss is {loss.detach().float().sum().item()}")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16: the GradScaler skips steps with inf gradients itself
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            self._check(trainer, bool(torch.isfinite(norm)), f"the gradient norm is {norm.item()} (the loss was finite)")

    def _check(self, trainer, finite: bool, what: str) -> None:
        if trainer.world_size > 1:  # every rank must stop, or the others wait forever in the next all-reduce
            everywhere = not trainer.strategy.reduce_boolean_decision(not finite, all=False)
            what, finite = (what if not finite else "not finite on another rank"), everywhere
        if not finite:
            raise TrainingError(self.message(trainer, what))

    def message(self, trainer, what: str) -> str:
        where = f"the training step after global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx} of {trainer.num_training_batches} in the epoch)"
        rows = ""
        batch = self._batch if isinstance(self._batch, dict) else {}
        # the data module's batches carry their rows' IDs and file (batching.Collator); other loaders' rows go by index
        ids = batch.get("ids") or ([str(i) for i in batch["index"].tolist()] if "index" in batch else None)
        if ids:
            shown = ", ".join(ids[:16]) + (f", ... ({len(ids)} rows)" if len(ids) > 16 else "")
            rows = f" The batch held the rows with IDs {shown}" + (f" of {batch['source']}." if batch.get("source") else ".")
        callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        kept = []
        if last := next((c for c in callbacks if c.last_model_path), None):
            step = last_global_step_saved(last)  # 0 until this process saved one
            kept.append(f"the last good checkpoint is {last.last_model_path}" + (f" (global step {step})" if step else ""))
        if best := next((c.best_model_path for c in callbacks if c.best_model_path), None):
            kept.append(f"the best is {best}")
        kept = (
            "Nothing was saved after the last good step: " + "; ".join(kept) + ". Resume with `--ckpt_path last` once the cause is fixed."
            if kept
            else "No checkpoint had been written yet."
        )
        return (
            f"Training stopped at {where}: {what}.{rows} {kept} Usual causes: a learning rate too high for "
            "this model (lower `model.init_args.lr`/`head_lr`, or raise `warmup_ratio`), fp16 without loss scaling "
            "(use `precision: 16-mixed` or `bf16-mixed`), or a broken input row (check the rows above)."
        )
