"""Interrupted runs: resume exactly where they stopped, with `emolightning fit --config <run>/config.yaml --ckpt_path last`.

What a resume needs, and where it comes from:

- A recent checkpoint: `LastCheckpoint` rewrites `last.ckpt` after every epoch, on SIGTERM and
  every `last_checkpoint.every_n_train_steps` optimizer steps, through `AtomicCheckpointIO`, so a
  kill never leaves half a checkpoint under a checkpoint's name. A fit that completes removes it,
  unless `last_checkpoint.keep_after_fit` (the best checkpoints hold no optimizer state: best_checkpoint.py).
- Finding it: `resolve_resume` turns `--ckpt_path last` into the newest `last*.ckpt` of the run's
  directory (a resumed run gets a new logger version_N+1, where Lightning's own "last" looks and
  finds nothing), and has the resumed run write its checkpoints beside the one it resumed from, so
  `checkpoint`'s best-model tracking carries on.
- The same batches: Lightning resumes mid-epoch only with a stateful train loader.
  `ResumableDataLoader` records how many batches of the epoch it handed out; after a restart its
  sampler, whose order is a function of (seed, epoch), skips those.
- The same dropout masks: Lightning does not checkpoint random number generators. `ExactResume`
  saves them in every checkpoint and puts them back just before training continues.
Optimizer, LR scheduler, loop counters and callbacks' states are Lightning's own business.
"""

from __future__ import annotations

import glob
import os
import random
import signal

import numpy as np
import torch
from fsspec.utils import get_protocol
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..errors import ConfigError, StorageError
from ..files import write_atomically
from ..models.checkpoints import CHECKPOINT_DIRS, checkpoint_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file in the checkpoint's own folder, fsync, then `os.replace`.

    Lightning's own save (`_atomic_save`) goes through an fsspec transaction whose temporary file
    is made by `tempfile.mkstemp()`, i.e. in /tmp. When /tmp is another filesystem than the
    checkpoints (a tmpfs, a container volume, a network disk), the final move falls back to a copy
    into the checkpoint's name, and a kill during that copy leaves a truncated `last.ckpt` that the
    next `--ckpt_path last` would pick; /tmp also has to hold a whole checkpoint. A rename within one
    folder is atomic: a reader sees the old file or the new one, never a part. Remote paths (s3://
    ...) keep Lightning's save.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = str(path)
        if storage_options is not None or get_protocol(path) != "file":
            return super().save_checkpoint(checkpoint, path, storage_options)
        # a full disk or a read-only folder: a StorageError naming the path and the checkpoint's size
        write_atomically(path, lambda f: torch.save(checkpoint, f), needed=checkpoint_bytes(checkpoint))


def checkpoint_bytes(checkpoint: dict) -> int:
    """About how many bytes `torch.save(checkpoint)` writes: its tensors' (pickled metadata is small beside them)."""
    total, stack = 0, [checkpoint]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def use_atomic_checkpoint_io(trainer) -> None:
    """Give the trainer's strategy `AtomicCheckpointIO` unless it was configured with another CheckpointIO, and have every
    rank stop when a checkpoint save fails (`stop_every_rank_on_a_failed_save`)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    stop_every_rank_on_a_failed_save(trainer.strategy)


def stop_every_rank_on_a_failed_save(strategy) -> None:
    """After each checkpoint save, rank 0 tells every rank whether it failed; then each raises the same StorageError.

    Lightning writes a checkpoint on rank 0 alone (`Strategy.save_checkpoint`, through the checkpoint
    IO) and the other ranks wait for it in a barrier. A save that fails (a full disk, a read-only
    folder) used to stop rank 0 only: the others crashed with gloo's "Connection closed by peer"
    traceback or, under NCCL, waited for the collective's timeout (30 minutes by default). One
    broadcast of a short message per save, on every rank, makes them all stop at once, with the
    one paragraph rank 0 has. `save_checkpoint` is a public method that every rank calls (via
    `Trainer.save_checkpoint`), so wrapping the strategy's own keeps any strategy's saving as it is.
    """
    save = strategy.save_checkpoint

    def save_checkpoint(checkpoint, filepath, storage_options=None) -> None:
        if strategy.world_size <= 1:  # known only once the processes are started
            return save(checkpoint, filepath, storage_options=storage_options)
        error = None
        try:
            save(checkpoint, filepath, storage_options=storage_options)
        except Exception as err:  # a bug keeps its traceback on rank 0; the other ranks still stop, named
            error = err
        failed = strategy.broadcast(None if error is None else (isinstance(error, StorageError), str(error)), src=0)
        if error is not None:
            raise error
        if failed is not None:
            storage, message = failed
            raise StorageError(message) if storage else RuntimeError(f"Rank 0 could not save the checkpoint {filepath}: {message}")

    strategy.save_checkpoint = save_checkpoint


class LastCheckpoint(Checkpoint):
    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 0, keep_after_fit: bool = False):
        """`last.ckpt`, the latest state of a run, for resuming it with `--ckpt_path last`.

        Rewritten (atomically, always under that name) at the end of every epoch, after its
        validation, every `every_n_train_steps` optimizer steps, and on SIGTERM. It holds everything a resume
        needs: weights, optimizer and scheduler states, loop counters, the position in the epoch's
        data order and the random number generators. A fit that completes removes it (the best
        checkpoint is what test, predict and export use); one that stops early (SIGTERM, requeue,
        an error) keeps it.

        Args:
            dirpath: Folder of last.ckpt; linked from `checkpoint.dirpath` (default: the run's
                checkpoints folder).
            every_n_train_steps: Also save every that many optimizer steps, so a kill loses at most
                that many steps (0: only at epoch ends). Each save writes weights and optimizer
                state (~3x the model's size).
            keep_after_fit: Keep last.ckpt when the fit completes, e.g. to train it further later
                with `--ckpt_path last` and a higher `trainer.max_epochs`.
        """
        # a Checkpoint (not a ModelCheckpoint, whose schedule and file naming it does not share): Lightning runs the
        # Checkpoint callbacks last, in their order, so each save here holds `checkpoint`'s best-model tracking of this step
        self.dirpath, self.every_n_train_steps, self.keep_after_fit = dirpath, every_n_train_steps, keep_after_fit
        self.last_model_path = ""  # the last.ckpt this run wrote or resumed from
        self.last_step_saved = 0  # the global step of the latest save in this process (0 before the first)
        self._saved = False

    def folder(self, trainer) -> str:
        """`dirpath`, else the folder of the run's best checkpoints (resolved by then: ModelCheckpoint does it in `setup`)."""
        best = next((c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
        return str(self.dirpath or best or os.path.join(trainer.default_root_dir, "checkpoints"))

    def state_dict(self) -> dict:
        return {"last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_model_path = state_dict.get("last_model_path", "")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step != self.last_step_saved:  # once per optimizer step
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if saves_on_train_epoch_end(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not saves_on_train_epoch_end(trainer):
            self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # SIGTERM (preemption, `scancel`, `kill PID`): Lightning finishes the batch, then raises this;
        # the state is consistent, so save it. Not on other exceptions (a NaN loss, Ctrl+C mid-step).
        if isinstance(exception, SIGTERMException):
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # a fit too short to save (no epoch end reached): only a kept last.ckpt needs it
        if self.keep_after_fit and not self._saved:
            self._save(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        # Lightning calls this only when the fit completed, not after an exception (SIGTERM and requeue included)
        path = self.last_model_path
        if not self.keep_after_fit and path and os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.folder(trainer)):
            trainer.strategy.remove_checkpoint(path)  # on global rank 0, through the checkpoint IO
            self.last_model_path = ""

    def _save(self, trainer) -> None:
        # also when a step-wise save just wrote this global step: the epoch-end state has the
        # validation results (tuned thresholds, the best-model tracking of `checkpoint`)
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.last_model_path = os.path.join(self.folder(trainer), "last.ckpt")  # before saving: it is part of the state
        # a full checkpoint (optimizer, loops, callbacks) is what resuming needs; said explicitly, so Lightning has nothing to note
        trainer.save_checkpoint(self.last_model_path, weights_only=False)  # every rank calls it; rank 0 writes, through AtomicCheckpointIO
        self.last_step_saved, self._saved = trainer.global_step, True


def saves_on_train_epoch_end(trainer) -> bool:
    """Whether the epoch's state is complete at the end of its training (no validation after it), as ModelCheckpoint decides:
    else it is saved after the validation, whose results (tuned thresholds, the best score) it then holds."""
    if trainer.check_val_every_n_epoch != 1:  # which epochs validate is not known in advance
        return False
    num_val_batches = sum(trainer.num_val_batches) if isinstance(trainer.num_val_batches, list) else trainer.num_val_batches
    return num_val_batches == 0 or trainer.val_check_interval == 1.0


class StopRequested(SIGTERMException):
    """The requeue signal (SIGUSR1) stopped training at an optimizer step boundary, after saving last.ckpt."""


class RequeueSignal(Callback):
    """SIGUSR1 -> save last.ckpt at the next optimizer step and stop: the requeue path emolightning controls.

    `scripts/slurm/train.sbatch` traps SLURM's warning signal before the time limit, forwards it
    to the tasks as SIGUSR1 and requeues the job once they have exited; the requeued job resumes
    with `--ckpt_path last`. The handler only sets a flag: nothing is saved inside a signal
    handler (Lightning's SLURM handler checkpoints there, with a barrier, on every rank, and can
    hang; its auto-requeue is off in configs/trainer/multinode.yaml). After each optimizer step the
    ranks agree (one all-reduce of a flag) whether any of them got the signal, so all stop at the
    same step, where a step-wise save would also have been: the resume is exact. The stop raises
    StopRequested (a SIGTERMException), on which `last_checkpoint` saves, and the command exits 143.
    The handler is installed only if SIGUSR1 has none (Lightning's auto-requeue, when on, keeps its own).
    """

    def __init__(self):
        self._requested, self._step, self._previous = False, -1, None

    def _handler(self, signum, frame) -> None:
        self._requested = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._step = trainer.global_step
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous = signal.signal(signal.SIGUSR1, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step:  # mid-accumulation: not a step boundary
            return
        self._step = trainer.global_step
        requested = trainer.strategy.reduce_boolean_decision(self._requested, all=False) if trainer.world_size > 1 else self._requested
        if requested:
            rank_zero_info(f"SIGUSR1: stopping after global step {trainer.global_step} to be requeued; last.ckpt is saved first.")
            raise StopRequested(143)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None


def rng_states(device: torch.device | None = None) -> dict:
    """The global random number generators, as tensors and plain Python values (loadable with weights_only)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if device is not None and device.type == "cuda":  # this rank's GPU only: get_rng_state_all would open every GPU
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(states["torch"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in states and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


class ExactResume(Callback):
    """What Lightning does not restore on its own: the random number generators, and sometimes the loader's position.

    RNG: saved in every checkpoint, restored at the first `on_train_epoch_start` or
    `on_train_batch_start` after loading, the point at which the uninterrupted run went on after
    saving. Earlier would not do: between loading and training, a resumed run draws numbers the
    uninterrupted one did not (sanity validation, the DataLoader iterator's base seed). Under DDP
    the ranks' states differ (each rank's dropout draws as many numbers as its batches have
    elements), and only rank 0 writes the checkpoint: so every rank's state is gathered into it,
    and each rank gets its own back.

    Loader position: when `configure_optimizers` reads `trainer.estimated_stepping_batches` (ours
    does, for the LR schedule), Lightning builds the train loader before restoring the checkpoint
    and then never hands it its saved state (Lightning issue #20550). So this callback keeps the
    position of a train loader that has one (`state_dict`/`load_state_dict`, as ResumableDataLoader)
    in its own state too, and hands it back in `on_train_start`, before the first batch is drawn.
    """

    def __init__(self):
        self._pending: dict | None = None
        self._pending_position: dict | None = None
        self._loader = None  # this epoch's train loader, whose position every checkpoint keeps
        self._device: torch.device | None = None
        self._rank = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._device, self._rank = pl_module.device, trainer.global_rank

    def state_dict(self) -> dict:
        states = rng_states(self._device)
        position = {"loader": self._loader.state_dict()} if hasattr(self._loader, "state_dict") else {}
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
            return {"ranks": [states], **position}
        # every rank saves (Lightning builds the checkpoint on all ranks, and rank 0 writes it)
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, states)
        return {"ranks": gathered, **position}

    def load_state_dict(self, state_dict: dict) -> None:
        ranks = state_dict["ranks"]
        if self._rank >= len(ranks):
            rank_zero_warn(
                f"The checkpoint holds the random states of {len(ranks)} ranks, and this run has more: ranks {len(ranks)}+ start from rank 0's (not an exact resume)."
            )
        self._pending = ranks[self._rank] if self._rank < len(ranks) else ranks[0]
        self._pending_position = state_dict.get("loader")

    def on_train_start(self, trainer, pl_module) -> None:
        # the same position Lightning hands the loader when it built it after loading the checkpoint: handing it twice is harmless
        loader = trainer.train_dataloader
        if self._pending_position is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self._pending_position)
        self._pending_position = None

    def _restore_rng(self, pl_module) -> None:
        if self._pending is not None:
            set_rng_states(self._pending, pl_module.device)
            self._pending = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # resumed at an epoch boundary
        self._loader = trainer.train_dataloader  # a new one when `trainer.reload_dataloaders_every_n_epochs`
        self._restore_rng(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:  # resumed mid-epoch
        self._restore_rng(pl_module)


def refuse_stale_hpc_checkpoint(config) -> None:
    """Under SLURM, a fresh job with no --ckpt_path must not silently resume another job's hpc_ckpt_N.ckpt.

    Lightning resumes from the newest `hpc_ckpt_N.ckpt` in `trainer.default_root_dir` whenever SLURM
    is detected and no --ckpt_path is given. Every config shares that folder across runs, so a new
    job (another lr, another seed) would start from an old job's weights, and skip emolightning's
    own resume logic. A requeued job (SLURM_RESTART_COUNT > 0) is left to it.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if config.get("ckpt_path") is not None or not SLURMEnvironment.detect() or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        return
    root = (config.get("trainer") or {}).get("default_root_dir") or os.getcwd()
    if "://" in str(root):
        return
    stale = sorted(glob.glob(os.path.join(root, "hpc_ckpt_*.ckpt")))
    if stale:
        raise ConfigError(
            f"trainer.default_root_dir '{root}' holds {', '.join(os.path.basename(p) for p in stale)} from an earlier SLURM job, which Lightning "
            "would resume from silently (its weights, step and lr schedule) in this new job. Give this run its own folder "
            "(`--trainer.default_root_dir runs/<name>`; scripts/slurm/train.sbatch uses one per job), resume on purpose with "
            "`--ckpt_path hpc`, or delete the old files."
        )


def find_last_checkpoint(folders: list[str]) -> str | None:
    """The most recently written `last*.ckpt` in `folders` (glob patterns), or None."""
    found = [p for folder in folders for p in glob.glob(os.path.join(folder, "last*.ckpt"))]
    return max(found, key=os.path.getmtime) if found else None


def resolve_resume(subcommand: str, config) -> None:
    """`--ckpt_path last` -> the run's newest last.ckpt; a run folder -> its best checkpoint (validate, test, predict) or its
    last.ckpt (`fit`, a resume); a resumed `fit` keeps writing checkpoints beside the one it resumed from.

    `config` is the subcommand's parsed namespace, changed in place (so the new run's config.yaml
    records the checkpoint it resumed from).
    """
    ckpt = config.get("ckpt_path")
    if not ckpt or ckpt in ("best", "hpc") or "://" in str(ckpt):
        return
    checkpoint_dir = config.get("checkpoint", {}).get("dirpath") if subcommand == "fit" else None
    if ckpt == "last":
        if checkpoint_dir:
            folders = [checkpoint_dir]
        else:
            roots = {config.get("trainer", {}).get("default_root_dir") or os.getcwd()}
            loggers = config.get("trainer", {}).get("logger")
            for logger in loggers if isinstance(loggers, list) else [loggers]:
                save_dir = logger.get("init_args", {}).get("save_dir") if hasattr(logger, "get") else None
                if save_dir:
                    roots.add(save_dir)
            folders = [os.path.join(root, pattern) for root in sorted(roots) for pattern in CHECKPOINT_DIRS]
        found = find_last_checkpoint(folders)
        if found is None:  # Lightning warns and starts from scratch: `--ckpt_path last` can be set and forgotten
            return
        rank_zero_info(f"--ckpt_path last: resuming from {found}")
        config.ckpt_path = ckpt = found
    elif os.path.isdir(ckpt) and subcommand == "fit":
        config.ckpt_path = ckpt = last_checkpoint_of_run(ckpt)
        rank_zero_info(f"--ckpt_path {config.ckpt_path}: resuming the run's last.ckpt")
    elif os.path.isdir(ckpt):
        config.ckpt_path = ckpt = checkpoint_path(ckpt)  # the run's one best checkpoint
    elif not os.path.isfile(ckpt):
        other = (
            "`--ckpt_path last` to resume the latest run under trainer.default_root_dir"
            if subcommand == "fit"
            else "the run folder that `fit` printed (e.g. runs/mine/lightning_logs/version_0), which stands for its best checkpoint"
        )
        raise ConfigError(
            f"The checkpoint '{ckpt}' (option --ckpt_path) does not exist. Give a .ckpt file written by `emolightning fit` "
            f"(<run>/checkpoints/best-*.ckpt{' or last.ckpt' if subcommand == 'fit' else ''}), or {other}."
        )
    if subcommand == "fit" and not checkpoint_dir:
        # the resumed run logs to a new version_N+1, but its checkpoints continue in the old folder:
        # `checkpoint` restores its best score only when its dirpath is unchanged
        folder = os.path.dirname(os.path.abspath(ckpt))
        config.checkpoint.dirpath = folder
        if config.get("last_checkpoint") is not None:
            config.last_checkpoint.dirpath = folder


def last_checkpoint_of_run(folder: str) -> str:
    """The newest last.ckpt of the run folder `folder` (given to `fit --ckpt_path`, a resume); a one-paragraph ConfigError without one."""
    found = find_last_checkpoint([glob.escape(folder), *(os.path.join(glob.escape(folder), pattern) for pattern in CHECKPOINT_DIRS)])
    if found is None:
        raise ConfigError(
            f"`fit --ckpt_path '{folder}'` resumes a run from its last.ckpt, and that folder holds none (not in it, in its checkpoints/ "
            "or in lightning_logs/version_*/checkpoints/): a fit that completed removed it, and a best checkpoint has no optimizer "
            "state to resume from. To train on from where an interrupted run stopped, give `--ckpt_path last` with the run's "
            "config (`--config <run>/config.yaml`); to use the run's best model, give the folder to test, validate, predict or "
            "export; to train longer after a completed fit, run it with `--last_checkpoint.keep_after_fit true` next time."
        )
    return found
