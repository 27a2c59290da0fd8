"""`emolightning predict`: a prediction file in the official SemEval-2018 E-c submission format.

    emolightning predict --config run/config.yaml --ckpt_path run/checkpoints/best-*.ckpt --output pred.txt

The file is tab-separated: `ID, Tweet, <one 0/1 column per label>`, one row per input text in the
input's order, with IDs and texts as the data module read them (row numbers for a plain .txt with
one text per line). Labels are decided at the checkpoint's tuned thresholds (`predict_step`);
`--probabilities true` adds a `p_<label>` column per label. Batches arrive in length order, so each
row is put back in place by its `index`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .errors import DataError

# the official files are tab-separated without quoting: these characters cannot appear in a field
UNSAFE = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


class PredictionFileWriter(BasePredictionWriter):
    def __init__(self, output: str, probabilities: bool = False):
        """Writes `predict_step` outputs as an official E-c file.

        Args:
            output: Path of the file to write (replaced atomically once all rows are predicted).
            probabilities: Also write each label's probability, in columns `p_<label>`.
        """
        super().__init__(write_interval="batch")
        self.output, self.probabilities = output, probabilities
        self.preds: np.ndarray | None = None
        self.probs: np.ndarray | None = None
        self.seen: np.ndarray | None = None

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        # one row per input, filled in by index: N x L bytes (+ N x L floats for probabilities)
        n, labels = len(self._table(trainer)), len(pl_module.label_names)
        self.preds = np.zeros((n, labels), dtype=np.uint8)
        self.probs = np.zeros((n, labels), dtype=np.float32) if self.probabilities else None
        self.seen = np.zeros(n, dtype=bool)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        index = prediction["index"].cpu().numpy()
        self.preds[index] = prediction["preds"].cpu().numpy()
        if self.probs is not None:
            self.probs[index] = prediction["probs"].float().cpu().numpy()
        self.seen[index] = True

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:  # each rank predicted a share of the rows: rank 0 writes them all
            self._gather(trainer)
        if trainer.is_global_zero:
            self.write(self._table(trainer), pl_module.label_names)
        self.preds = self.probs = self.seen = None

    def _gather(self, trainer) -> None:
        shares = [None] * trainer.world_size
        rows = np.flatnonzero(self.seen)
        mine = (rows, self.preds[rows], None if self.probs is None else self.probs[rows])
        torch.distributed.all_gather_object(shares, mine)
        for rows, preds, probs in shares:
            self.preds[rows], self.seen[rows] = preds, True
            if self.probs is not None:
                self.probs[rows] = probs

    @staticmethod
    def _table(trainer):
        tables = getattr(trainer.datamodule, "tables", {})
        if "predict" not in tables:
            raise DataError("PredictionFileWriter needs the EmotionDataModule's predict split (trainer.datamodule.tables['predict']); run it through `emolightning predict`.")
        return tables["predict"]

    def write(self, table, label_names: list[str]) -> None:
        rows = np.flatnonzero(self.seen)
        if len(rows) < len(table):
            rank_zero_warn(f"Only {len(rows)} of {len(table)} texts were predicted (is `trainer.limit_predict_batches` set?); {self.output} holds those rows only.")
        header = ["ID", "Tweet", *label_names] + ([f"p_{name}" for name in label_names] if self.probs is not None else [])
        unsafe = 0
        lines = ["\t".join(header)]
        for i in rows:
            text = table.texts[i].translate(UNSAFE)
            unsafe += text != table.texts[i]
            fields = [table.ids[i].translate(UNSAFE), text, *map(str, self.preds[i].tolist())]
            if self.probs is not None:
                fields += [f"{p:.6f}" for p in self.probs[i].tolist()]
            lines.append("\t".join(fields))
        if unsafe:
            rank_zero_warn(f"{unsafe} texts of {table.source} hold tabs or line breaks, which the tab-separated E-c format cannot represent: they are written with spaces instead.")
        directory = os.path.dirname(os.path.abspath(self.output))
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(self.output)}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.output)  # atomic: a reader never sees half a prediction file
        rank_zero_info(f"Wrote {len(rows)} predictions ({len(label_names)} labels) to {self.output}")
