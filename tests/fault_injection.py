"""Test-only callbacks that break a run on purpose or record what it did, added with `--trainer.callbacks+=...` (tests/ on PYTHONPATH)."""

from __future__ import annotations

import errno
import os
import shutil
import signal

import torch
from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    def __init__(self, step: int):
        """SIGKILL this process (as `kill -9` would) right after optimizer step `step`, in a run not resumed from a checkpoint.

        Args:
            step: Global step after which to die; steps after the last checkpoint are lost.
        """
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.ckpt_path is None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class InjectNaN(Callback):
    def __init__(self, step: int):
        """Set one weight of the head to NaN before the forward pass of global step `step`.

        Args:
            step: Global step whose loss becomes NaN.
        """
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.head.weight[0, 0] = float("nan")


class RecordSteps(Callback):
    def __init__(self, path: str):
        """Append `global_step<TAB>row indices<TAB>loss` for every training batch to `path` (for comparing runs).

        Args:
            path: Text file to append to; `{rank}` in it is replaced by the process's global rank.
        """
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        with open(self.path.format(rank=trainer.global_rank), "a") as f:
            f.write(f"{trainer.global_step}\t{batch['index'].tolist()}\t{float(outputs['loss']):.10f}\n")


class SigtermAtStep(Callback):
    def __init__(self, step: int):
        """Send this process SIGTERM (as a preempting scheduler would) after optimizer step `step`, in a run not resumed.

        Args:
            step: Global step after which the signal arrives.
        """
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.ckpt_path is None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class SignalBatchScriptAtStep(Callback):
    def __init__(self, step: int):
        """On rank 0, send SIGUSR1 to the batch script (as SLURM's `--signal=B:USR1@...` would) after optimizer step `step`, in a run not resumed.

        The fake srun of tests/training/test_slurm.py puts the batch script's pid in SBATCH_PID.

        Args:
            step: Global step after which the signal is sent.
        """
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.ckpt_path is None and trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(int(os.environ["SBATCH_PID"]), signal.SIGUSR1)


class RecordTeacher(Callback):
    def __init__(self, path: str):
        """Save what a distiller's teacher did on this rank: the rows it ran on before the first training step and during
        the steps, the rows each epoch trained on, and the teacher-logit cache at the end of training.

        Args:
            path: File for torch.save; `{rank}` in it is replaced by the process's global rank.
        """
        self.path = path
        self.rows, self.phase, self.seen = {"start": 0, "steps": 0}, "start", {}

    def count(self, module, args, out) -> None:
        self.rows[self.phase] += len(args[0])

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.teacher.register_forward_hook(self.count)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.phase = "steps"
        self.seen.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {"rows": self.rows, "seen": self.seen, "cache": None if pl_module._teacher_logits is None else pl_module._teacher_logits.cpu()},
            self.path.format(rank=trainer.global_rank),
        )


class FullDiskOnRankZero(Callback):
    def __init__(self, file: str):
        """On rank 0 only, make every save of a file whose name contains `file` meet a full disk (ENOSPC from fsync, as a
        filling disk gives it), as on a cluster where rank 0 writes the checkpoints to a disk that the others do not.

        Args:
            file: Part of the file name whose saves fail, e.g. `last.ckpt`.
        """
        self.file = file

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.global_rank != 0:
            return
        real, name = os.fsync, self.file

        def fsync(fd):
            if name in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd)

        os.fsync = fsync


class FillDiskOnSave(Callback):
    def __init__(self, epoch: int, folder: str, leave_bytes: int = 4096):
        """When the first checkpoint of epoch `epoch` is being saved (its dict is built; the file is written next), fill the file
        system of `folder` with a real file, leaving `leave_bytes` free: that save then meets a really full disk.

        Args:
            epoch: The epoch whose first checkpoint save fails.
            folder: A folder on the (small, test-mounted) file system to fill.
            leave_bytes: Bytes left free (a few KB: torch.save's zip writer then fails with its own RuntimeError, 'unexpected pos').
        """
        self.epoch, self.folder, self.leave_bytes, self.filled = epoch, folder, leave_bytes, False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.current_epoch != self.epoch or trainer.global_rank != 0 or self.filled:
            return
        self.filled = True
        free = shutil.disk_usage(self.folder).free
        with open(os.path.join(self.folder, "filler.bin"), "wb") as f:
            f.write(b"\0" * max(free - self.leave_bytes, 0))
