"""The ensemble as a model: `EnsembleClassifier`, what `validate`, `test` and `predict --ckpt_path ENSEMBLE.json` run.

    emolightning ensemble RUN1/checkpoints/best-*.ckpt RUN2/checkpoints/best-*.ckpt --data_dir DATA --out ensemble.json
    emolightning predict --config RUN1/config.yaml --ckpt_path ensemble.json --output pred.txt

The manifest (manifest.py, written by `emolightning ensemble`, ensemble_build.py) names the
members, their weights and the thresholds tuned on their averaged dev probabilities. For
`--ckpt_path MANIFEST` the CLI puts an EnsembleClassifier in place of the config's model
(`ensemble_config`), so `predict` needs no dev split; the averaging itself is models/averaging.py.

Members may differ in encoder, tokenizer and max_length: each tokenises the texts itself, so the
ensemble's input is raw texts. Memory: a step is a whole chunk of texts (`data.text_chunks`:
`data.eval_batch_size` x `data.predict_chunk_batches` texts); for each chunk every member is built
from its checkpoint, runs over the chunk in batches of `batch_size`, and is freed before the next
one is built. So an ensemble predicts in about the memory of one member, at the cost of one
checkpoint load per member and chunk; `emolightning ensemble --keep_members_loaded` (recorded in
the manifest) keeps all of them on the device instead (no reloading, N x the memory).
"""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import torch
from torch import Tensor

from ..data.encoding import TextBatches
from ..errors import ConfigError, DataError
from ..hardware import pad_multiple
from ..metrics import EmotionScores
from ..models.averaging import normalized_weights
from ..models.checkpoints import load_classifier
from ..models.classifier import EmotionClassifier, log_epoch_scores
from ..outputs import KeepsEpochOutputs
from ..pretrained.encoders import load_tokenizer
from .manifest import Manifest, read_manifest


def ensemble_config(manifest: Manifest, eval_batch_size: int) -> dict:
    """The subcommand config that `--ckpt_path MANIFEST` stands for: the EnsembleClassifier, and data steps of whole chunks of texts.

    `eval_batch_size` is the data's: a member's forward pass takes that many texts.
    """
    init_args = {"manifest": manifest.path, "batch_size": eval_batch_size, "keep_members_loaded": manifest.keep_members_loaded}
    return {"model": {"class_path": "emolightning.EnsembleClassifier", "init_args": init_args}, "data": {"text_chunks": True}}


@torch.no_grad()
def member_probs(model: EmotionClassifier, texts: list[str], max_length: int, batch_size: int = 64) -> Tensor:
    """(N, L) probabilities of `texts`, in their order, with the member's own tokenizer and max_length (longest first, each batch padded to its longest)."""
    out = torch.empty(len(texts), len(model.label_names), device=model.device)
    for batch in TextBatches(texts, load_tokenizer(model.hparams.encoder), max_length, batch_size, pad_multiple(model.device)):
        logits = model(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device))
        out[torch.tensor(batch["rows"], device=model.device)] = torch.sigmoid(logits.float())
    return out


class EnsembleClassifier(KeepsEpochOutputs, L.LightningModule):
    def __init__(self, manifest: str, label_names: list[str] | None = None, batch_size: int = 64, keep_members_loaded: bool = False):
        """An ensemble of EmotionClassifier checkpoints for `validate`, `test` and `predict` (`--ckpt_path ensemble.json` sets it up).

        Its input is raw texts, not token ids: every member tokenises them itself (members may
        differ in tokenizer and max_length), their probabilities are averaged with the manifest's
        weights, then cut at its thresholds. A step's batch must carry them as `texts`: the data
        module's with `data.text_chunks` (a whole chunk of texts per step), which `ensemble_config` sets.

        Args:
            manifest: The ensemble manifest written by `emolightning ensemble`.
            label_names: The data's label names (linked from the data by the CLI); must be the manifest's.
            batch_size: Texts per forward pass of a member (the CLI sets it to `data.eval_batch_size`).
            keep_members_loaded: Keep every member on the device (faster, N x the memory) instead of
                building each from its checkpoint for every chunk and freeing it after.
        """
        super().__init__()
        self.save_hyperparameters()
        self.manifest = read_manifest(manifest)
        self.weights = normalized_weights([m.weight for m in self.manifest.members], len(self.manifest.members))
        self.register_buffer("thresholds", torch.tensor(self.manifest.thresholds))
        self.val_scores, self.test_scores = EmotionScores(), EmotionScores()
        self.loaded: dict[int, EmotionClassifier] = {}  # with keep_members_loaded

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.label_names)

    def setup(self, stage: str) -> None:
        # here, not in __init__: jsonargparse would report an __init__ error as "not a subclass of EmotionClassifier"
        data = self.hparams.label_names
        if data is not None and list(data) != self.manifest.label_names:
            raise ConfigError(
                f"The ensemble {self.manifest.path} predicts the labels {self.manifest.label_names}, but the data has {list(data)}. "
                "Use the data its members were trained on, or set `data.label_columns` to the ensemble's labels."
            )

    def member(self, i: int) -> EmotionClassifier:
        if i in self.loaded:
            return self.loaded[i]
        model = load_classifier(self.manifest.members[i].checkpoint, self.device)
        try:  # true half precisions convert the module (mixed ones autocast the step); outside a Trainer it stays float32
            model = self.trainer.precision_plugin.convert_module(model)
        except RuntimeError:  # "not attached to a `Trainer`"
            pass
        if self.hparams.keep_members_loaded:
            self.loaded[i] = model
        return model

    def forward(self, texts: list[str]) -> Tensor:
        """Texts -> (N, L) averaged probabilities (members one at a time)."""
        total = torch.zeros(len(texts), len(self.label_names), device=self.device)
        for i, weight in enumerate(self.weights):
            model = self.member(i)
            total += weight * member_probs(model, texts, self.manifest.members[i].max_length, self.hparams.batch_size)
            del model  # freed here unless kept: the next member gets its memory
        return total

    def _eval_step(self, batch: dict, stage: str) -> None:
        if "texts" not in batch:
            raise DataError(
                "An ensemble tokenises the texts itself: its batches must carry `texts` (EmotionDataModule's do with `data.text_chunks: true`, "
                "which `--ckpt_path ENSEMBLE.json` sets)."
            )
        (self.val_scores if stage == "val" else self.test_scores).update(self(batch["texts"]), batch["labels"], batch["index"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        probs = self(batch["texts"])
        return {"index": batch["index"], "probs": probs, "preds": (probs >= self.thresholds).to(torch.uint8)}

    def _epoch_end(self, stage: str) -> None:
        metric = self.val_scores if stage == "val" else self.test_scores
        probs, target = metric.compute()
        metric.reset()
        if not self.trainer.sanity_checking:
            outputs = log_epoch_scores(self, stage, probs, target, self.manifest.threshold, self.thresholds)
            self.keep_epoch_outputs(replace(outputs, source=self.manifest.path))  # its test scores go beside the manifest

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self):
        raise ConfigError("An ensemble is not trained: train its members with `emolightning fit`, then build it with `emolightning ensemble`.")
