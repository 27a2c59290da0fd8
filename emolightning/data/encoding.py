"""Texts -> token ids -> batches of similar length: the one way emolightning tokenises, orders and batches texts.

Every path that runs texts through a model uses these: the cached splits (datamodule.py) tokenise
with `encode` and evaluate in `longest_first` order; predict input (stream.py) and an ensemble
member's texts (ensemble.py) go through `TextBatches`; the distillation teacher's logit cache
(distill.py) batches rows with `sorted_batches`. Longest first: similar lengths share a batch, so
little compute goes to padding, and an out-of-memory shows at the first batch instead of the last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .batching import pad, truncate


def encode(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[torch.Tensor], list[int]]:
    """Each text's token ids (special tokens included) as an int32 tensor of at most `max_length` ids, and its length before that cut."""
    # ids only: the masks come from padding, and the tokenizer's would be two more lists per text
    encoded = tokenizer(list(texts), truncation=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return truncate(encoded, max_length), [len(ids) for ids in encoded]


def longest_first(lengths: Sequence[int]) -> list[int]:
    """The positions 0..n-1 ordered by length, longest first; equal lengths keep their order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """The positions in `longest_first` order, cut into batches of `batch_size` (the last may be short)."""
    order = longest_first(lengths)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class TextBatches:
    """`texts` tokenised once, sorted longest first and cut into batches, each padded to its own longest text.

    `batches[b]` is a dict: `rows` (the batch's positions in `texts`), `input_ids` and
    `attention_mask` (B, longest; `longest` rounded up to `pad_to_multiple_of` if set) and
    `truncated` (how many of its texts were cut to `max_length`). Texts longer than `max_length`
    are ordered by their full length. A batch is padded only when asked for, so a rank that skips
    the batches of other ranks pads none of them.
    """

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int, batch_size: int, pad_to_multiple_of: int | None = None):
        self.input_ids, lengths = encode(tokenizer, texts, max_length)
        self.cut = [length > max_length for length in lengths]
        self.pad_token_id, self.pad_to_multiple_of = tokenizer.pad_token_id, pad_to_multiple_of
        self.rows = sorted_batches(lengths, batch_size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, b: int) -> dict:
        rows = self.rows[b]
        input_ids, attention_mask = pad([self.input_ids[i] for i in rows], self.pad_token_id, self.pad_to_multiple_of)
        return {"rows": rows, "input_ids": input_ids, "attention_mask": attention_mask, "truncated": sum(self.cut[i] for i in rows)}

    def __iter__(self):
        return (self[b] for b in range(len(self)))
