"""The best checkpoints (`checkpoint`, `<run>/checkpoints/best-*.ckpt`): what test, predict, export, ensembles and distillation read, and no more.

A Lightning checkpoint also holds the optimizer's state, which for AdamW is two more tensors the
size of the weights (a file about three times the weights' size), and a run with
the `EMAWeightAveraging` callback keeps its raw weights beside the averaged ones. Only a resume reads those, and a
resume starts from `last.ckpt` (resume.py), which keeps them. A best checkpoint keeps the weights,
the model's and the data module's hyperparameters (labels, tokenizer, text options; the tuned
thresholds are weights), the epoch and step, the callbacks' states (export's model card reads the
monitored score from them) and the loops' counters.

A run folder holds one best checkpoint at a time (with the default `save_top_k: 1`): a resumed fit
takes up the best-model tracking of the run it resumes, whatever spelling of the folder each of them
was given, so its new best replaces the old one; and it removes a best file that the killed process
wrote after its last.ckpt, which the resumed run writes again when it gets there.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from ..compat import ModelCheckpointWithOwnSaves
from ..errors import ConfigError

# what only a resume reads: the optimizers' and LR schedulers' states, the raw weights of an EMA run (WeightAveraging)
TRAINING_STATE = ("optimizer_states", "lr_schedulers", "current_model_state")


class BestCheckpoint(ModelCheckpointWithOwnSaves):
    def __init__(self, *args, save_optimizer_state: bool = False, **kwargs):
        """Lightning's ModelCheckpoint, whose files leave out what only a resume reads (`last.ckpt` has it).

        Args:
            save_optimizer_state: Also keep the optimizer and LR scheduler states (and, with
                the `EMAWeightAveraging` callback, the raw weights) in these files, as Lightning does: about three
                times the size. Only `fit --ckpt_path` reads them, and it resumes from last.ckpt.
        """
        super().__init__(*args, **kwargs)
        self.save_optimizer_state = save_optimizer_state
        self._resumed = False  # the tracking was restored from a checkpoint (a resumed fit)
        self._resumed_from_time: float | None = None  # the modification time of the checkpoint a resumed fit started from

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, under which checkpoints written before this class hold its best-model tracking
        # (a resume restores it from there) and under which export's model card finds the monitored score
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_save_own_checkpoint(self, trainer, checkpoint: dict) -> None:
        if not self.save_optimizer_state:
            for key in TRAINING_STATE:
                checkpoint.pop(key, None)

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning takes up the saved tracking (best score, the top-k files to replace) only when the saved dirpath equals
        # this one as a string; a run fitted in `runs/mine` saved it relative and its resume has it absolute (resume.py),
        # so the tracking was dropped and the resumed run's first best was saved beside the old one, which stayed
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath and same_folder(saved, self.dirpath):
            state_dict = rebased_tracking(state_dict, saved, self.dirpath)
        super().load_state_dict(state_dict)
        self._resumed = True

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        resumed_from = trainer.ckpt_path  # rewritten as this run goes on: its time now is when the killed run wrote it
        if self._resumed and resumed_from and os.path.isfile(resumed_from):
            self._resumed_from_time = os.path.getmtime(resumed_from)
        self.remove_left_behind(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self.remove_left_behind(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.remove_left_behind(trainer)

    def remove_left_behind(self, trainer) -> None:
        """In a resumed fit, remove the best checkpoints the killed run wrote after the last.ckpt resumed from (`untracked_best_files`),
        once the best this run tracks is on disk: until then, the one left behind may be the run's only best checkpoint."""
        if self._resumed_from_time is None or self.save_top_k <= 0:
            return
        if not (self.best_model_path and os.path.isfile(self.best_model_path)):
            return
        for path in self.untracked_best_files(self._resumed_from_time):
            trainer.strategy.remove_checkpoint(path)  # on global rank 0, through the checkpoint IO

    def untracked_best_files(self, written_after: float) -> list[str]:
        """Files of this callback's name pattern in its folder, written after `written_after` (a time stamp: that of the checkpoint
        resumed from), that its tracking does not hold: best checkpoints that a process killed after saving them and before saving
        last.ckpt left behind (the resumed run trains that epoch again). Older files are another run's, and stay."""
        if not self.dirpath or not os.path.isdir(self.dirpath):
            return []
        pattern = re.sub(r"\{[^}]*\}", "*", self.filename or "*") + "*" + self.FILE_EXTENSION
        tracked = {os.path.realpath(p) for p in (*self.best_k_models, self.best_model_path, self.last_model_path) if p}
        found = glob.glob(os.path.join(glob.escape(str(self.dirpath)), pattern))
        return sorted(
            p
            for p in found
            if os.path.realpath(p) not in tracked
            and not os.path.basename(p).startswith((self.CHECKPOINT_NAME_LAST, "last", "hpc_ckpt"))
            and os.path.getmtime(p) > written_after
        )


def same_folder(saved: str, dirpath: str) -> bool:
    """Whether the folder a checkpoint's tracking was saved with (`saved`, relative to the working directory of that run, or
    absolute) is `dirpath`: the same folder after resolving both here, or a relative `saved` that `dirpath` ends with (the
    resumed run started in another working directory)."""
    if "://" in saved or "://" in dirpath:
        return False
    if os.path.realpath(saved) == os.path.realpath(dirpath):
        return True
    tail = Path(os.path.normpath(saved)).parts
    return not os.path.isabs(saved) and ".." not in tail and Path(os.path.realpath(dirpath)).parts[-len(tail) :] == tail


def rebased_tracking(state: dict, saved: str, dirpath: str) -> dict:
    """ModelCheckpoint's state with its folder and file paths spelled from `dirpath`, the same folder as `saved`."""

    def moved(path):
        if isinstance(path, str) and path and os.path.normpath(os.path.dirname(path)) == os.path.normpath(saved):
            return os.path.join(dirpath, os.path.basename(path))
        return path

    state = dict(state, dirpath=dirpath)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            state[key] = moved(state[key])
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {moved(path): score for path, score in state["best_k_models"].items()}
    return state


def without_training_state(checkpoint: dict) -> bool:
    """Whether a checkpoint dict lacks the optimizer state that `fit --ckpt_path` restores (a best checkpoint, or one saved weights-only)."""
    return "optimizer_states" not in checkpoint


def refuse_resume_without_training_state(path: str, checkpoint: dict) -> None:
    """`fit --ckpt_path` of a best checkpoint (`checkpoint`, the dict read from `path`): a one-paragraph error naming last.ckpt, instead of Lightning's KeyError."""
    if without_training_state(checkpoint):
        raise ConfigError(
            f"The checkpoint '{path}' (option --ckpt_path of `fit`) holds the model without the optimizer state that resuming "
            "a fit needs: it is a best checkpoint, which test, predict, export, ensembles and distillation use. Resume with "
            "`--ckpt_path last` (the run's last.ckpt: kept while a fit runs, when it stops early, and after it with "
            "`--last_checkpoint.keep_after_fit true`), or train a new run."
        )
