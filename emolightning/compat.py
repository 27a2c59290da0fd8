"""Every private Lightning and jsonargparse name emolightning relies on, in one place.

Each fills a gap in the public API (the reason is given where it is used). An upgrade may rename
any of them without notice: `pyproject.toml` bounds the versions from above at the newest tested,
and tests/test_compat.py checks `PRIVATE_NAMES` against the installed packages, so a renamed one
fails there, by name, instead of somewhere in the middle of a run.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

# (where, name): what the functions below use. `where` is how test_compat.py gets an object that has it.
PRIVATE_NAMES = [
    ("LightningCLI", "_prepare_subcommand_parser"),
    ("LightningCLI", "_parse_ckpt_path"),
    ("ModelCheckpoint", "_save_checkpoint"),
]


# ---- ModelCheckpoint: saving last.ckpt on our own schedule, and what the best checkpoints hold ------
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


# ---- LightningCLI: the two public hooks it lacks ----------------------------------------------
class LightningCLIWithHooks(LightningCLI):
    """LightningCLI plus `add_subcommand_arguments` (options of one subcommand alone) and `before_ckpt_path`/`after_ckpt_path`
    (around the point where Lightning replaces the config's model with the --ckpt_path checkpoint's hyperparameters)."""

    def add_subcommand_arguments(self, parser, subcommand: str) -> None:
        """Add options to one subcommand's parser."""

    def before_ckpt_path(self) -> None:
        """Runs just before Lightning reads `--ckpt_path`'s hyperparameters into the config."""

    def after_ckpt_path(self) -> None:
        """Runs just after; `self.config` holds the checkpoint's hyperparameters."""

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        self.add_subcommand_arguments(parser, subcommand)
        return parser

    def _parse_ckpt_path(self) -> None:
        self.before_ckpt_path()
        super()._parse_ckpt_path()
        self.after_ckpt_path()
