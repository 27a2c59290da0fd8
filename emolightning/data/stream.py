"""Prediction input, streamed: a file of any length in bounded memory.

`emolightning predict` reads its file a chunk at a time (`chunk_batches` eval batches, 8,192
texts by default), tokenises the chunk, sorts it by length and cuts it into batches
(encoding.TextBatches: similar lengths share a batch, so little compute goes to padding) and
yields them. The chunk size trades memory for padding: a larger chunk holds more texts at once
and pads less (BENCHMARKS.md, benchmarks/predict_memory.py). Only one chunk per DataLoader
worker is ever held; `PredictionFileWriter` (prediction_writer.py) puts each chunk's rows back in input order
and writes them out before the next chunks arrive.

Who predicts what is a function of the row count alone, so every party can work it out: chunk c
goes to DataLoader worker c % num_workers, and the b-th batch of the whole stream (counting every
chunk's batches in order) to rank b % world_size. Since a chunk holds a whole number of batches,
only the file's very last batch is short. The row count comes from a first pass that also runs
every check of the table reader, so bad input stops the run before the model sees a text.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..pretrained.encoders import load_tokenizer
from .encoding import TextBatches
from .tables import Record


class PredictStream(IterableDataset):
    columns = ("ID", "Tweet")  # the (ID, text) column names of the prediction file (datamodule.py sets the input's own)

    def __init__(
        self,
        records: Callable[[], Iterator[Record]],
        num_rows: int,
        tokenizer: str,
        max_length: int,
        batch_size: int,
        chunk_batches: int = 128,
        rank: int = 0,
        world_size: int = 1,
        pad_to_multiple_of: int | None = None,
    ):
        """Batches of `records()` (a fresh iterator each time, picklable for worker processes).

        A batch is a dict: `input_ids`, `attention_mask` (batch, longest), `index` (batch,) each row's
        position in the file, `ids` and `texts` (lists of str, as read), `chunk` (int) and `truncated`
        (int: rows cut to max_length). The padded length is a multiple of `pad_to_multiple_of`, if set.
        """
        self.records, self.num_rows, self.tokenizer, self.max_length = records, num_rows, tokenizer, max_length
        self.batch_size, self.chunk_batches, self.rank, self.world_size = batch_size, chunk_batches, rank, world_size
        self.pad_to_multiple_of = pad_to_multiple_of
        self.num_batches = math.ceil(num_rows / batch_size)  # over all ranks
        self.num_chunks = math.ceil(self.num_batches / chunk_batches)

    def __len__(self) -> int:
        """Batches this rank predicts (summed over its DataLoader workers): the progress bar's total."""
        return len(range(self.rank, self.num_batches, self.world_size))

    def batch_rows(self, b: int) -> int:
        return min(self.batch_size, self.num_rows - b * self.batch_size)

    def rows_in_chunk(self, chunk: int) -> int:
        """How many rows of `chunk` this rank predicts (0 when it gets none of its batches)."""
        first = chunk * self.chunk_batches
        batches = range(first, min(first + self.chunk_batches, self.num_batches))
        return sum(self.batch_rows(b) for b in batches if b % self.world_size == self.rank)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        tokenizer = load_tokenizer(self.tokenizer)
        records = self.records()
        chunk_rows = self.chunk_batches * self.batch_size
        for chunk in range(self.num_chunks):
            rows = list(itertools.islice(records, chunk_rows))  # every worker reads every row; each tokenises its own chunks
            if chunk % num_workers != worker_id:
                continue
            batches = TextBatches([text for _, text, _ in rows], tokenizer, self.max_length, self.batch_size, self.pad_to_multiple_of)
            for k in range(len(batches)):
                if (chunk * self.chunk_batches + k) % self.world_size != self.rank:
                    continue
                batch = batches[k]
                members = batch["rows"]
                yield {
                    "input_ids": batch["input_ids"],
                    "attention_mask": batch["attention_mask"],
                    "index": torch.tensor([chunk * chunk_rows + i for i in members]),
                    "ids": [rows[i][0] for i in members],
                    "texts": [rows[i][1] for i in members],
                    "chunk": chunk,
                    "truncated": batch["truncated"],
                }
