"""What the model needs from the data before fit, handed over by a callback once both are set up.

`pos_weight: auto` needs the training split's label frequencies, and `model.compile` wants padded
lengths in buckets. The data module knows both only after its `setup("fit")`, which Lightning runs
before the callbacks' `setup`; a callback is the place Lightning hands the trainer (and so the data
module) and the model together, so the model itself reads neither.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


class PrepareFit(Callback):
    """Before fit: the training label frequencies to `model.set_label_frequencies`, and a warning for compile without length buckets."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None:
            return
        if pl_module.criterion.needs_label_frequencies:
            pl_module.set_label_frequencies(datamodule.train_label_frequencies())
        multiple = datamodule.hparams.get("pad_to_multiple_of")
        if pl_module.hparams.compile and not multiple and trainer.strategy.root_device.type == "cpu":
            rank_zero_warn(
                "model.compile is on but batches are padded to their longest text (data.pad_to_multiple_of unset): every new length compiles "
                "the encoder again (about a minute each on a CPU). Set `--data.pad_to_multiple_of 16`."
            )
