"""The one tokenise / sort by length / batch helper (encoding.py), pinned to the batches the four paths made before it."""

from __future__ import annotations

import torch

from emolightning.data.encoding import TextBatches, encode, longest_first, sorted_batches
from emolightning.data.stream import PredictStream
from emolightning.pretrained.encoders import load_tokenizer

WORDS = "the a today my friend work this is was so very and with at home news game city".split()
TEXTS = [" ".join(WORDS[: (i * 7) % 13 + 1]) for i in range(11)]  # 1..13 words, 5 of them longer than max_length=8 tokens


def test_predict_stream_batches_are_those_it_made_before_the_shared_helper(tiny_encoder):
    # (chunk, rows, padded shape, truncated), worked out by hand. Row i has (7 i mod 13) + 1 words, each one token of the
    # tiny vocabulary, plus [CLS] and [SEP]: rows 0..10 have 3, 10, 4, 11, 5, 12, 6, 13, 7, 14, 8 tokens.
    # Chunks of 2 batches of 3 = 6 rows: rows 0-5, then 6-10. Each chunk is ordered longest first by the full token count
    # (rows 5, 3, 1 are all cut to max_length 8 and still keep that order) and cut into batches of 3:
    #   chunk 0: 5 (12), 3 (11), 1 (10) -> padded to 8, 3 cut; then 4 (5), 2 (4), 0 (3) -> padded to 5, none cut
    #   chunk 1: 9 (14), 7 (13), 10 (8) -> padded to 8, 2 cut; then 8 (7), 6 (6) -> padded to 7, none cut
    # Batches are dealt to the ranks in turn: batch b to rank b mod world_size.
    rows = [(str(i), text, None) for i, text in enumerate(TEXTS)]
    expected = [(0, [5, 3, 1], (3, 8), 3), (0, [4, 2, 0], (3, 5), 0), (1, [9, 7, 10], (3, 8), 2), (1, [8, 6], (2, 7), 0)]
    for world_size in (1, 2):
        for rank in range(world_size):
            stream = PredictStream(lambda: iter(rows), len(rows), tiny_encoder, 8, batch_size=3, chunk_batches=2, rank=rank, world_size=world_size)
            got = [(b["chunk"], b["index"].tolist(), tuple(b["input_ids"].shape), b["truncated"]) for b in stream]
            assert got == expected[rank::world_size]


def test_text_batches_pad_each_batch_to_its_own_longest_text_and_keep_every_row_once(tiny_encoder):
    tokenizer = load_tokenizer(tiny_encoder)
    batches = TextBatches(TEXTS, tokenizer, max_length=8, batch_size=4, pad_to_multiple_of=4)
    ids, lengths = encode(tokenizer, TEXTS, 8)
    assert sorted(i for batch in batches for i in batch["rows"]) == list(range(len(TEXTS)))
    for batch in batches:
        rows = batch["rows"]
        longest = max(len(ids[i]) for i in rows)
        assert batch["input_ids"].shape == (len(rows), -(-longest // 4) * 4)
        assert batch["attention_mask"].sum(dim=1).tolist() == [len(ids[i]) for i in rows]
        assert batch["truncated"] == sum(lengths[i] > 8 for i in rows)
        for row, i in enumerate(rows):  # the tokenizer's own ids, the final [SEP] kept when cut
            assert torch.equal(batch["input_ids"][row, : len(ids[i])], ids[i].long())
            assert ids[i][-1].item() == tokenizer.sep_token_id


def test_longest_first_keeps_the_order_of_equal_lengths():
    # lengths 2, 5, 2, 7, 5 at positions 0..4: the 7 (position 3), then the two 5s in input order (1, 4), then the two 2s (0, 2)
    assert longest_first([2, 5, 2, 7, 5]) == [3, 1, 4, 0, 2]
    # that order cut into batches of 2, the last one short
    assert sorted_batches([2, 5, 2, 7, 5], 2) == [[3, 1], [4, 0], [2]]
    # all equal: input order; strictly increasing: reversed
    assert longest_first([4, 4, 4]) == [0, 1, 2] and longest_first([1, 2, 3, 4]) == [3, 2, 1, 0]
    assert sorted_batches([3, 1, 2], 5) == [[0, 2, 1]] and sorted_batches([], 3) == []
