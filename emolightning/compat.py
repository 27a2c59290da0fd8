"""The private framework names emolightning cannot do without, in one place, each with the reason.

Everything else goes through public API (tests/test_compat.py fails on a private name used in any
other module). An upgrade may rename these without notice: `pyproject.toml` bounds lightning from
above at the newest tested, and tests/test_compat.py checks `PRIVATE_NAMES` against the installed
packages, so a renamed one fails there, by name, instead of somewhere in the middle of a run. torch
is not bounded for its one knob, which only `model.compile` reads: a torch without it keeps its own
default (`raise_recompile_limit`).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

# (where, name): what the code below uses; `where` is how test_compat.py gets an object that has it (a dotted one is a module).
PRIVATE_NAMES = [
    # ModelCheckpoint writes each of its own files (top-k, last, on exception) through this method, and no public hook tells
    # `on_save_checkpoint` whose file is being written: `save_weights_only` would also drop the callbacks' states that a
    # resume's best-model tracking and export's model card read.
    ("ModelCheckpoint", "_save_checkpoint"),
    # LightningCLI replaces the config's model with the --ckpt_path checkpoint's hyperparameters inside this method, with no
    # public hook before it: `--ckpt_path last`/ENSEMBLE.json must be resolved, and a wrong file refused, first.
    ("LightningCLI", "_parse_ckpt_path"),
    # no public API sets how many graphs torch.compile keeps per function before falling back to eager
    ("torch._dynamo.config", "recompile_limit"),
]


# ---- ModelCheckpoint: what the best checkpoints hold (best_checkpoint.py) ----------------------
class ModelCheckpointWithOwnSaves(ModelCheckpoint):
    """ModelCheckpoint plus `on_save_own_checkpoint(trainer, checkpoint)`: called with the dict of each file this callback writes
    (not with those of other callbacks or of `trainer.save_checkpoint`), after every other callback's `on_save_checkpoint`
    (Lightning runs checkpoint callbacks last) and before the LightningModule's."""

    _saving_own = False

    def on_save_own_checkpoint(self, trainer, checkpoint: dict) -> None:
        """Change the checkpoint dict of one of this callback's own files."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._saving_own:
            self.on_save_own_checkpoint(trainer, checkpoint)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        # every file of a ModelCheckpoint (top-k, last, on exception) is written through this method
        self._saving_own = True
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self._saving_own = False


# ---- LightningCLI: the hook it lacks around --ckpt_path -----------------------------------------
class LightningCLIWithHooks(LightningCLI):
    """LightningCLI plus `before_ckpt_path`/`after_ckpt_path`, around the point where Lightning replaces the config's model
    with the --ckpt_path checkpoint's hyperparameters."""

    def before_ckpt_path(self) -> None:
        """Runs just before Lightning reads `--ckpt_path`'s hyperparameters into the config."""

    def after_ckpt_path(self) -> None:
        """Runs just after; `self.config` holds the checkpoint's hyperparameters."""

    def _parse_ckpt_path(self) -> None:
        self.before_ckpt_path()
        super()._parse_ckpt_path()
        self.after_ckpt_path()


# ---- torch.compile: one graph per padded length -----------------------------------------------
def raise_recompile_limit(n: int) -> None:
    """Let torch.compile keep at least `n` graphs per function (one per input shape and train/eval mode) before it falls back to eager."""
    import torch._dynamo

    config = torch._dynamo.config
    if hasattr(config, "recompile_limit"):  # else torch decides; compiling still works, with fewer shapes kept
        config.recompile_limit = max(config.recompile_limit, n)
