"""The best checkpoints (`checkpoint`, `<run>/checkpoints/best-*.ckpt`): what test, predict, export, ensembles and distillation read, and no more.

A Lightning checkpoint also holds the optimizer's state, which for AdamW is two more tensors the
size of the weights (a file about three times the weights' size), and a run with
the `EMAWeightAveraging` callback keeps its raw weights beside the averaged ones. Only a resume reads those, and a
resume starts from `last.ckpt` (resume.py), which keeps them. A best checkpoint keeps the weights,
the model's and the data module's hyperparameters (labels, tokenizer, text options; the tuned
thresholds are weights), the epoch and step, the callbacks' states (export's model card reads the
monitored score from them) and the loops' counters.
"""

from __future__ import annotations

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

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, under which checkpoints written before this class hold its best-model tracking
        # (a resume restores it from there) and under which export's model card finds the monitored score
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_save_own_checkpoint(self, trainer, checkpoint: dict) -> None:
        if not self.save_optimizer_state:
            for key in TRAINING_STATE:
                checkpoint.pop(key, None)


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
