"""What a classifier hands to the callbacks that record its runs, at the end of each validation or test epoch.

The callbacks (training/record.py, training/tracking.py) and the prediction writer
(inference/prediction_writer.py) read a LightningModule only through `Classifier`: its label names
and the `EpochOutputs` of its latest epoch. EmotionClassifier and EnsembleClassifier keep theirs
through `KeepsEpochOutputs`, so a callback needs to know neither class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


@dataclass(frozen=True)
class EpochOutputs:
    """One validation or test epoch as the module scored it, on the CPU.

    Attributes:
        stage: "val" or "test".
        probs: (N, L) probabilities, one row per distinct example of the split, over every DDP rank.
        target: (N, L) gold labels (0/1), rows as in `probs`.
        thresholds: (L,) decision thresholds after the epoch: the tuned ones where this validation tuned them.
        label_names: The L label names, in column order.
        source: The file the module was built from when no checkpoint was given to the Trainer (an
            ensemble's manifest); None when it is `trainer.ckpt_path`.
    """

    stage: str
    probs: Tensor
    target: Tensor
    thresholds: Tensor
    label_names: list[str]
    source: str | None = None

    def positives(self) -> list[int]:
        """Gold positives of each label among the scored examples."""
        return self.target.sum(dim=0).long().tolist()


@runtime_checkable
class Classifier(Protocol):
    """The part of a LightningModule that the record callbacks and the prediction writer read."""

    @property
    def label_names(self) -> list[str]:
        """Label names, in the order of the prediction columns."""
        ...

    def epoch_outputs(self, stage: str) -> EpochOutputs | None:
        """The outputs of the latest `stage` ("val" or "test") epoch that was scored (not the sanity check), or None before one."""
        ...


class KeepsEpochOutputs:
    """Mixin for a LightningModule: `keep_epoch_outputs` at the end of each scored epoch provides `Classifier.epoch_outputs`."""

    # the latest scored epoch of each stage, the same on every rank (None before one)
    val_outputs: EpochOutputs | None = None
    test_outputs: EpochOutputs | None = None

    def keep_epoch_outputs(self, outputs: EpochOutputs) -> None:
        setattr(self, f"{outputs.stage}_outputs", outputs)

    def epoch_outputs(self, stage: str) -> EpochOutputs | None:
        """The latest scored `stage` ("val"/"test") epoch: probabilities, gold labels, thresholds (read by the record callbacks)."""
        return self.val_outputs if stage == "val" else self.test_outputs
