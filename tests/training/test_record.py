"""record.py's callbacks under a real Trainer, fed only by what the module hands over (outputs.Classifier).

The module here is neither an EmotionClassifier nor an ensemble: the callbacks must need nothing
more than its `label_names` and `epoch_outputs`.
"""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from emolightning.outputs import Classifier, EpochOutputs
from emolightning.training.record import TEST_SCORES_FILE, VAL_PROBS_FILE, BestValidationOutputs, KeepTestScores, load_val_probs

SCORES = [0.2, 0.6, 0.4]  # val/score of epochs 0, 1, 2: epoch 1 is the best


class Scored(L.LightningModule):
    """A linear layer whose validation outputs (and `val/score`) are made up per epoch."""

    def __init__(self, source: str | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)
        self.source = source
        self.outputs: dict[str, EpochOutputs] = {}

    @property
    def label_names(self) -> list[str]:
        return ["joy", "fear"]

    def epoch_outputs(self, stage: str) -> EpochOutputs | None:
        return self.outputs.get(stage)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def test_step(self, batch, batch_idx):
        pass

    def _epoch_end(self, stage: str, score: float) -> None:
        self.log(f"{stage}/score", score)
        if self.trainer.sanity_checking:
            return
        epoch = self.current_epoch
        probs, target = torch.full((3, 2), epoch / 10), torch.tensor([[1, 0], [0, 1], [1, 1]])
        self.outputs[stage] = EpochOutputs(stage, probs, target, torch.tensor([0.3, 0.6]) + epoch / 100, self.label_names, self.source)

    def on_validation_epoch_end(self):
        self._epoch_end("val", SCORES[self.current_epoch] if not self.trainer.sanity_checking else 0.0)

    def on_test_epoch_end(self):
        self._epoch_end("test", 0.75)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path, *callbacks, max_epochs: int = 3) -> L.Trainer:
    return L.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def loader() -> DataLoader:
    return DataLoader(torch.ones(4, 2), batch_size=2)


def test_the_module_of_these_tests_is_a_classifier_and_a_bare_one_is_not():
    assert isinstance(Scored(), Classifier) and not isinstance(L.LightningModule(), Classifier)


def test_best_validation_outputs_come_from_what_the_module_hands_over(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), monitor="val/score", mode="max")
    fit = trainer(tmp_path, checkpoint, BestValidationOutputs())
    fit.fit(Scored(), loader(), loader())
    saved = load_val_probs(str(tmp_path / "checkpoints" / VAL_PROBS_FILE))
    # the best epoch's (1), not the last one's (2): rewritten only on a new best
    assert saved["epoch"] == 1 and saved["step"] == 4 and saved["label_names"] == ["joy", "fear"]
    assert np.allclose(saved["probs"], 0.1) and saved["target"].tolist() == [[1, 0], [0, 1], [1, 1]]
    assert np.allclose(saved["thresholds"], [0.31, 0.61])
    assert "epoch=1" in checkpoint.best_model_path


def test_a_module_without_epoch_outputs_is_left_alone(tmp_path):
    class Bare(Scored):
        epoch_outputs = None  # not a Classifier

    assert not isinstance(Bare(), Classifier)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), monitor="val/score", mode="max")
    trainer(tmp_path, checkpoint, BestValidationOutputs(), max_epochs=1).fit(Bare(), loader(), loader())
    assert checkpoint.best_model_path and not (tmp_path / "checkpoints" / VAL_PROBS_FILE).exists()


@pytest.mark.parametrize("from_source", [False, True])
def test_test_scores_go_beside_the_checkpoint_or_the_source_the_module_names(tmp_path, from_source):
    ckpt = tmp_path / "run" / "model.ckpt"
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(Scored(), loader())
    ckpt.parent.mkdir()
    fit.save_checkpoint(str(ckpt))
    manifest = tmp_path / "ensemble" / "ensemble.json"  # as an ensemble's manifest: no checkpoint for the Trainer to load
    manifest.parent.mkdir()
    manifest.write_text("{}")
    model = Scored(source=str(manifest) if from_source else None)
    trainer(tmp_path, KeepTestScores()).test(model, loader(), ckpt_path=None if from_source else str(ckpt))
    folder = manifest.parent if from_source else ckpt.parent
    saved = json.loads((folder / TEST_SCORES_FILE).read_text())
    assert saved == {"checkpoint": "ensemble.json" if from_source else "model.ckpt", "scores": {"test/score": 0.75}}
    assert not (ckpt.parent if from_source else manifest.parent).joinpath(TEST_SCORES_FILE).exists()
