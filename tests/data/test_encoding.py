"""The one tokenise / sort by length / batch helper (encoding.py), pinned to the batches the four paths made before it."""

from __future__ import annotations

import torch

from emolightning.data.encoding import TextBatches, encode, longest_first, sorted_batches
from emolightning.data.stream import PredictStream
from emolightning.pretrained.encoders import load_tokenizer

WORDS = "the a today my friend work this is was so very and with at home news game city".split()
TEXTS = [" ".join(WORDS[: (i * 7) % 13 + 1]) for i in range(11)]  # 1..13 words, 5 of them longer than max_length=8 tokens


def test_predict_stream_batches_are_those_it_made_before_the_shared_helper(tiny_encoder):
    # (chunk, rows, padded shape, truncated) as PredictStream cut them by hand: longest first by the full token count
    # (rows 5, 3, 1 are all cut to 8 tokens and still keep that order), batches of 3 in chunks of 2 batches, dealt to the ranks
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
    assert longest_first([2, 5, 2, 7, 5]) == [3, 1, 4, 0, 2]
    assert sorted_batches([2, 5, 2, 7, 5], 2) == [[3, 1], [4, 0], [2]]
