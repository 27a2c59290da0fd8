"""PredictionFileWriter with any predict loader: it reads its hook arguments, never the loader or the data module."""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from emolightning.data.stream import PredictStream
from emolightning.errors import ConfigError
from emolightning.inference.prediction_writer import PredictionFileWriter

from conftest import LABELS, make_rows

ROWS = make_rows(23, 3, "w")


class Predicts(L.LightningModule):
    """Label j of row i is on when (i + j) % 3 == 0; probabilities encode the row index."""

    @property
    def label_names(self) -> list[str]:
        return LABELS

    def predict_step(self, batch, batch_idx):
        index = batch["index"]
        preds = torch.stack([(index + j) % 3 == 0 for j in range(len(LABELS))], dim=1).to(torch.uint8)
        return {"index": index, "preds": preds, "probs": (index[:, None] / 1000.0).expand(-1, len(LABELS))}


def predict(loader, writer: PredictionFileWriter) -> None:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer])
    trainer.predict(Predicts(), loader, return_predictions=False)


def plain_batches(rows, size: int, seed: int) -> list[dict]:
    """Dict batches of `size` rows taken in a shuffled order, as any loader might yield them (no chunk, no PredictStream)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [
        {"index": torch.tensor(part), "ids": [rows[i][0] for i in part], "texts": [rows[i][1] for i in part]}
        for part in (order[k : k + size] for k in range(0, len(order), size))
    ]


@pytest.mark.parametrize("probabilities", [False, True])
def test_a_plain_loader_of_dict_batches_writes_the_file_the_stream_writes(tiny_encoder, tmp_path, probabilities):
    streamed, plain = tmp_path / "streamed.txt", tmp_path / "plain" / "pred.txt"
    stream = PredictStream(lambda: iter([(i, t, None) for i, t, _ in ROWS]), len(ROWS), tiny_encoder, 64, batch_size=4, chunk_batches=2)
    predict(DataLoader(stream, batch_size=None), PredictionFileWriter(str(streamed), probabilities, layout=lambda: stream))
    predict(DataLoader(plain_batches(ROWS, 5, seed=1), batch_size=None), PredictionFileWriter(str(plain), probabilities))
    expected = "\t".join(["ID", "Tweet", *LABELS] + ([f"p_{name}" for name in LABELS] if probabilities else [])) + "\n"
    for i, (row_id, text, _) in enumerate(ROWS):
        fields = [row_id, text, *(str(int((i + j) % 3 == 0)) for j in range(len(LABELS)))]
        expected += "\t".join(fields + ([f"{i / 1000.0:.6f}"] * len(LABELS) if probabilities else [])) + "\n"
    assert streamed.read_bytes() == plain.read_bytes() == expected.encode()
    assert sorted(p.name for p in plain.parent.iterdir()) == ["pred.txt"]  # the part and its counts merged and removed


def test_a_batch_without_ids_or_texts_is_refused_by_name(tmp_path):
    batches = [{"index": torch.tensor([0, 1]), "texts": ["a", "b"]}]
    with pytest.raises(ConfigError, match=r"needs each predict batch to carry ids, texts; batch 0 lacks ids"):
        predict(DataLoader(batches, batch_size=None), PredictionFileWriter(str(tmp_path / "pred.txt")))
    assert list(tmp_path.iterdir()) == []  # the part file went with the failed run
