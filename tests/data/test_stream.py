"""Streamed prediction (stream.py + PredictionFileWriter): one chunk in memory, every row once, input order out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from emolightning.data.stream import PredictStream
from emolightning.inference.prediction_writer import PredictionFileWriter

from conftest import LABELS, make_rows

ROWS = make_rows(53, 7, "s")  # 53 = 13 full batches of 4 and a short one


def records_of(rows, consumed: list[int] | None = None):
    def records():
        for row_id, text, _ in rows:
            if consumed is not None:
                consumed[0] += 1
            yield row_id, text, None

    return records


def stream(tiny_encoder, rank=0, world_size=1, rows=ROWS, max_length=64, consumed=None) -> PredictStream:
    return PredictStream(records_of(rows, consumed), len(rows), tiny_encoder, max_length, batch_size=4, chunk_batches=3, rank=rank, world_size=world_size)


def test_reads_one_chunk_at_a_time(tiny_encoder):
    consumed = [0]
    batches = iter(stream(tiny_encoder, consumed=consumed))
    next(batches)
    assert consumed[0] == 12  # the first chunk (3 batches of 4), not the file
    for _ in range(3):
        next(batches)
    assert consumed[0] == 24


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_share_the_rows_once_each_as_planned(tiny_encoder, world_size):
    seen = []
    for rank in range(world_size):
        part = stream(tiny_encoder, rank, world_size)
        batches = list(part)
        assert len(batches) == len(part)  # the progress bar's total is exact
        per_chunk = {}
        for batch in batches:
            per_chunk[batch["chunk"]] = per_chunk.get(batch["chunk"], 0) + len(batch["index"])
            seen += batch["index"].tolist()
        assert all(per_chunk.get(c, 0) == part.rows_in_chunk(c) for c in range(part.num_chunks))
    assert sorted(seen) == list(range(len(ROWS)))


def test_batches_are_length_sorted_rows_with_their_own_ids_and_texts(tiny_encoder):
    from emolightning.pretrained.encoders import load_tokenizer

    tokenizer = load_tokenizer(tiny_encoder)
    for batch in stream(tiny_encoder):
        index = batch["index"].tolist()
        assert batch["ids"] == [ROWS[i][0] for i in index] and batch["texts"] == [ROWS[i][1] for i in index]
        lengths = batch["attention_mask"].sum(1).tolist()
        assert lengths == sorted(lengths, reverse=True) and batch["input_ids"].shape[1] == lengths[0]  # padded to its own longest only
        for row, n, i in zip(batch["input_ids"], lengths, index):
            assert row[:n].tolist() == tokenizer(ROWS[i][1])["input_ids"]
    # the whole chunk is sorted, not each batch alone: its batches come longest first
    widths = [b["input_ids"].shape[1] for b in stream(tiny_encoder) if b["chunk"] == 0]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]


def test_long_texts_are_truncated_and_counted(tiny_encoder):
    from emolightning.pretrained.encoders import load_tokenizer

    lengths = [len(load_tokenizer(tiny_encoder)(text)["input_ids"]) for _, text, _ in ROWS]
    batches = list(stream(tiny_encoder, max_length=10))
    assert sum(b["truncated"] for b in batches) == sum(n > 10 for n in lengths) > 0
    assert max(b["input_ids"].shape[1] for b in batches) == 10
    # the last kept id is still [SEP], as the tokenizer's own truncation keeps it
    assert all(row[mask.sum() - 1] == load_tokenizer(tiny_encoder).sep_token_id for b in batches for row, mask in zip(b["input_ids"], b["attention_mask"]))


def test_dataloader_workers_take_whole_chunks(tiny_encoder):
    part = stream(tiny_encoder)
    batches = list(DataLoader(part, batch_size=None, num_workers=2))
    assert len(batches) == len(part)
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(len(ROWS)))


def fake_prediction(batch) -> dict:
    """Label j of row i is on when (i + j) % 3 == 0; probabilities encode the row index."""
    index = batch["index"]
    preds = torch.stack([(index + j) % 3 == 0 for j in range(len(LABELS))], dim=1).to(torch.uint8)
    return {"index": index, "preds": preds, "probs": (index[:, None] / 1000.0).expand(-1, len(LABELS))}


def run_writer(writer, part: PredictStream, is_global_zero: bool, max_pending: list[int], totals: list) -> None:
    """One rank's predict epoch, with the hooks Lightning calls; `totals` plays the all-reduce of the counts."""

    def reduce(counts, reduce_op):
        totals[0] = totals[0] + counts
        return totals[0]

    # the writer reduces nothing (counts travel in files); rank 0's broadcast of its merge result returns it as is
    strategy = SimpleNamespace(reduce=reduce, barrier=lambda name=None: None, broadcast=lambda obj, src=0: obj)
    # no predict_dataloaders: the writer learns the layout from its `layout` argument only
    trainer = SimpleNamespace(global_rank=part.rank, world_size=part.world_size, is_global_zero=is_global_zero, strategy=strategy)
    module = SimpleNamespace(label_names=LABELS)
    writer.on_predict_epoch_start(trainer, module)
    for batch in part:
        writer.write_on_batch_end(trainer, module, fake_prediction(batch), None, batch, 0, 0)
        max_pending[0] = max(max_pending[0], sum(len(rows) for rows in writer.pending.values()))
    writer.on_predict_epoch_end(trainer, module)


@pytest.mark.parametrize("world_size", [1, 2])
def test_writer_holds_at_most_a_chunk_and_writes_input_order(tiny_encoder, tmp_path, world_size, recwarn):
    out = tmp_path / "pred.txt"
    max_pending, totals = [0], [0]
    # rank 0 merges last, after every other rank has written its part (what the barrier ensures)
    for rank in reversed(range(world_size)):
        part = stream(tiny_encoder, rank, world_size)
        run_writer(PredictionFileWriter(str(out), probabilities=True, layout=lambda part=part: part), part, rank == 0, max_pending, totals)
    assert 0 < max_pending[0] <= 12  # one chunk of 3 batches of 4: the writer never holds the file
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and lines[0].split("\t") == ["ID", "Tweet", *LABELS, *[f"p_{name}" for name in LABELS]]
    rows = [line.split("\t") for line in lines[1:-1]]
    assert [r[:2] for r in rows] == [[row_id, text] for row_id, text, _ in ROWS]
    assert [r[2:13] for r in rows] == [[str(int((i + j) % 3 == 0)) for j in range(11)] for i in range(len(ROWS))]
    assert [r[13] for r in rows] == [f"{i / 1000.0:.6f}" for i in range(len(ROWS))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.txt"]  # part files removed
    assert not [w for w in recwarn if "were predicted" in str(w.message)]  # all 53 rows counted
