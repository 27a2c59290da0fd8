"""Numerical faults: stop at the first NaN or infinite loss or gradient, before it reaches the weights.

A NaN loss left alone turns every weight into NaN at the next optimizer step, and every checkpoint
written after it is worthless (`last.ckpt` included, which a resume would then start from).
`FiniteLossGuard` checks the loss before backward and, in full precision, the gradients before the
optimizer step, and stops the run with a TrainingError that names the step, the batch and its rows
and says where the last good checkpoint is. Checkpoints are written after the optimizer step, so
none is written for the bad step.

Per precision:

- `32-true`, `bf16-mixed` (and other precisions without a loss scaler): stop at the first NaN/inf
  loss, or NaN/inf gradient norm before the optimizer step. bf16 has float32's range, so a
  non-finite value is a real fault, never an overflow to wait out.
- `16-mixed` (fp16 with a GradScaler): the scaler multiplies the loss by a large factor, so inf
  gradients (and, after an fp16 overflow in the forward, an inf loss) are expected now and then;
  the scaler skips those optimizer steps and halves its scale, and the run goes on. The guard
  lets it: it stops only when the scaler has skipped `MAX_SKIPPED_STEPS` steps in a row, i.e. the
  scale has collapsed (65536 / 2^20 < 0.1) and every step fails whatever the scale, which is what
  persistent NaN gradients look like. A healthy run skips a few steps at its start, as many as the
  halvings its scale needs, and then about one in `growth_interval` (2000) steps.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision

from ..errors import TrainingError
from .resume import LastCheckpoint

MAX_SKIPPED_STEPS = 20


def grad_scaler(trainer) -> torch.amp.GradScaler | None:
    """The fp16 loss scaler of `16-mixed`, or None."""
    plugin = trainer.precision_plugin
    return plugin.scaler if isinstance(plugin, MixedPrecision) else None


class FiniteLossGuard(Callback):
    """Stops training at the first NaN/inf training loss or gradient; under fp16 loss scaling, when the scaler stops recovering."""

    def __init__(self):
        self._batch, self._batch_idx = None, -1
        self._step, self._scale, self._skipped = -1, 0.0, 0  # fp16: global step and scale last seen, steps skipped in a row

    def on_train_start(self, trainer, pl_module) -> None:
        if (scaler := grad_scaler(trainer)) is not None:
            self._step, self._scale, self._skipped = trainer.global_step, scaler.get_scale(), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if grad_scaler(trainer) is not None:
            return  # fp16: an overflow gives inf gradients, and the scaler skips the step (on_train_batch_end counts them)
        self._check(trainer, bool(torch.isfinite(loss.detach()).all()), f"the training loss is {loss.detach().float().sum().item()}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        scaler = grad_scaler(trainer)
        if scaler is None or trainer.global_step == self._step:  # no scaler, or no optimizer step in this batch (accumulation)
            return
        # the scale drops exactly when the scaler skipped the step. DDP all-reduces the gradients
        # before the scaler looks at them, so every rank skips the same steps: no collective needed
        scale = scaler.get_scale()
        self._skipped = self._skipped + 1 if scale < self._scale else 0
        self._step, self._scale = trainer.global_step, scale
        if self._skipped >= MAX_SKIPPED_STEPS:
            raise TrainingError(
                self.message(
                    trainer,
                    f"the fp16 loss scaler skipped the last {self._skipped} optimizer steps, as their gradients were inf or NaN at every scale down to {scale:g}",
                )
            )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if grad_scaler(trainer) is not None:
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
        if last := next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint) and c.last_model_path), None):
            step = last.last_step_saved  # 0 until this process saved one
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
