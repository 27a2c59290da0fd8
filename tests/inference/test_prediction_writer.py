"""PredictionFileWriter with any predict loader: it reads its hook arguments, never the loader or the data module."""

from __future__ import annotations

import json
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


# texts that each format must carry untouched (the tab-separated one as spaces): a comma, quotes, a line break, a tab, an empty text
HARD = [("q1", 'said "hi", then left'), ("q2", "two\nlines"), ("q3", "a\ttab"), ("q4", ""), ("q5", "plain")]


def expected_rows(rows, probabilities: bool) -> list[dict]:
    """What Predicts decides for each row (as numbers), keyed by the column names the writer is given."""
    out = []
    for i, (row_id, text) in enumerate(rows):
        row = {"msg_id": row_id, "message": text, **{name: int((i + j) % 3 == 0) for j, name in enumerate(LABELS)}}
        out.append(row | ({f"p_{name}": round(i / 1000.0, 6) for name in LABELS} if probabilities else {}))
    return out


class Layout:
    columns = ("msg_id", "message")
    num_rows, max_length, num_chunks = len(HARD), 64, 1

    def rows_in_chunk(self, chunk: int) -> int:
        return len(HARD)


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".tsv", ".txt"])
def test_the_output_format_follows_the_file_name(tmp_path, suffix, probabilities):
    import pandas as pd

    batches = [dict(batch, chunk=0) for batch in plain_batches(HARD, 2, seed=3)]
    out = tmp_path / f"predictions{suffix}"
    predict(DataLoader(batches, batch_size=None), PredictionFileWriter(str(out), probabilities, layout=Layout))
    want = expected_rows(HARD, probabilities)
    if suffix == ".csv":  # what pandas and the csv module read back: every text as it was
        frame = pd.read_csv(out, dtype={"msg_id": str, "message": str}, keep_default_na=False)
        assert frame.to_dict("records") == want
    elif suffix in (".jsonl", ".json"):
        frame = pd.read_json(out, lines=suffix == ".jsonl", dtype={"msg_id": str})
        assert frame.to_dict("records") == want
        text = out.read_text(encoding="utf-8")
        objects = [json.loads(line) for line in text.splitlines()] if suffix == ".jsonl" else json.loads(text)
        assert objects == want and list(objects[0]) == list(want[0])  # the columns in the file's order
    else:  # the official tab-separated format: no quoting, a tab or line break in a text is a space
        lines = out.read_text(encoding="utf-8").split("\n")
        assert lines[0].split("\t") == list(want[0]) and lines[-1] == "" and len(lines) == len(HARD) + 2
        for line, row in zip(lines[1:], want):
            fields = line.split("\t")
            assert fields[:2] == [row["msg_id"], row["message"].replace("\n", " ").replace("\t", " ")]
            assert fields[2:] == [str(v) if isinstance(v, int) else f"{v:.6f}" for v in list(row.values())[2:]]


@pytest.mark.parametrize("name", ["predictions", "predictions.parquet", "predictions.xlsx"])
def test_an_output_name_of_no_known_format_is_refused_before_predicting(tmp_path, name):
    with pytest.raises(ConfigError, match=r"--output '.*': the prediction file's format follows its name.*\.csv.*\.jsonl"):
        PredictionFileWriter(str(tmp_path / name))
