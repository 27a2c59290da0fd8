"""From token ids to padded batches: truncation, padding, the tokenised split and the training order.

Texts are tokenised once (datamodule.py caches the ids; stream.py tokenises predict input a chunk at a
time) and padded per batch, only to that batch's longest text: tweets are far shorter than a
fixed length of 128, which would spend most of the compute on padding (BENCHMARKS.md, section
"Where a training step goes").
`LengthGroupedSampler` puts texts of similar length into the same training batch.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler


def truncate(encoded: list[list[int]], limit: int) -> list[torch.Tensor]:
    """Token id lists -> int32 tensors of at most `limit` ids, keeping the final [SEP]/</s> as the tokenizer's own truncation would."""
    return [torch.tensor(x if len(x) <= limit else x[: limit - 1] + x[-1:], dtype=torch.int32) for x in encoded]


class TokenizedSplit(Dataset):
    """Token ids and labels of one split; item i is a dict of its `input_ids`, `index` i, and, when given, `labels`, `teacher_input_ids`, `id` and `text`.

    `ids` (the rows' IDs as read) and `source` (the file) travel into every batch, so that whatever
    meets a batch (a NaN loss, FiniteLossGuard) can name its rows without asking the data module.
    """

    def __init__(
        self,
        input_ids: list[torch.Tensor],
        labels: torch.Tensor | None,
        teacher_input_ids: list[torch.Tensor] | None = None,
        ids: list[str] | None = None,
        source: str | None = None,
        texts: list[str] | None = None,
    ):
        self.input_ids, self.labels, self.texts = input_ids, labels, texts
        self.teacher_input_ids = teacher_input_ids  # a distillation teacher's own tokenisation, if it differs
        self.ids, self.source = ids, source

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i], "index": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.teacher_input_ids is not None:
            item["teacher_input_ids"] = self.teacher_input_ids[i]
        if self.ids is not None:
            item["id"], item["source"] = self.ids[i], self.source
        if self.texts is not None:
            item["text"] = self.texts[i]
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def pad(sequences: list[torch.Tensor], pad_token_id: int, multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, longest) int64 ids padded with `pad_token_id`, and the (B, longest) attention mask; `longest` rounded up to `multiple_of`."""
    longest = max(len(ids) for ids in sequences)
    if multiple_of:
        longest = math.ceil(longest / multiple_of) * multiple_of
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class Collator:
    """Pads a list of items to the longest one in the batch (optionally to a multiple of 8).

    A batch holds `input_ids`, `attention_mask` (B, longest), `index` (B,), and as its items do
    `labels` (B, L) float, `teacher_input_ids`/`teacher_attention_mask`, `ids` (list of str) and
    `source` (str), and `texts` (list of str), as predict batches (stream.py) hold `ids` and `texts`.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, teacher_pad_token_id: int | None = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of
        self.teacher_pad_token_id = teacher_pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        input_ids, attention_mask = pad([item["input_ids"] for item in items], self.pad_token_id, self.pad_to_multiple_of)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "index": torch.tensor([it["index"] for it in items])}
        if "labels" in items[0]:
            batch["labels"] = torch.stack([item["labels"] for item in items]).float()
        if "teacher_input_ids" in items[0]:
            batch["teacher_input_ids"], batch["teacher_attention_mask"] = pad(
                [it["teacher_input_ids"] for it in items], self.teacher_pad_token_id, self.pad_to_multiple_of
            )
        if "id" in items[0]:
            batch["ids"], batch["source"] = [it["id"] for it in items], items[0]["source"]
        if "text" in items[0]:
            batch["texts"] = [it["text"] for it in items]
        return batch


class LengthGroupedSampler(Sampler[int]):
    """Shuffles, then groups texts of similar length into the same batch.

    Each epoch: a seeded permutation is cut into mega-batches of 50 global batches, each sorted by
    length and cut into global batches (batch_size x world size), whose order is shuffled; rank r
    takes every world-size-th item of each global batch. So 2 ranks at batch 8 see exactly the
    batches that 1 process sees at batch 16. It deals the ranks' shares itself, so Lightning must
    not wrap it in a DistributedSampler (which would reshuffle away the grouping): EmotionTrainer
    runs with `use_distributed_sampler=False`, and Lightning calls `set_epoch` on any loader's sampler
    that has one. With by_length=False the permutation is cut into batches as it is. The order depends on
    (seed, epoch) only, so a resumed run can skip the batches already trained on (`skip_batches`,
    set by ResumableDataLoader).
    """

    skip_batches = 0  # global batches of this epoch's order not to yield again (once)

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, num_replicas: int | None = None, rank: int | None = None, by_length: bool = True):
        super().__init__()
        if num_replicas is None or rank is None:
            num_replicas, rank = replicas()
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.num_replicas, self.rank, self.epoch, self.by_length = num_replicas, rank, 0, by_length
        global_batch = batch_size * num_replicas
        self.num_batches = math.ceil(len(self.lengths) / global_batch)
        self.num_samples = self.num_batches * batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        global_batch = self.batch_size * self.num_replicas
        # pad with repeats so every rank gets the same number of full batches
        order += order[: self.num_batches * global_batch - len(order)]
        if not self.by_length:
            return [order[i : i + global_batch] for i in range(0, len(order), global_batch)]
        mega = global_batch * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch)]
        shuffled = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffled]

    def __iter__(self):
        skip, self.skip_batches = self.skip_batches, 0
        for batch in self.global_batches()[skip:]:
            yield from batch[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return self.num_samples


def replicas() -> tuple[int, int]:
    """(world size, rank) of this process: (1, 0) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def shard(order: list[int], num_replicas: int, rank: int) -> list[int]:
    """This rank's share of an evaluation order, dealt as Lightning's DistributedSampler (shuffle=False) deals it: every
    num_replicas-th item from `rank`, the order padded with its first items to a multiple of num_replicas (so every rank runs
    as many batches; metrics.py drops the repeats by their index)."""
    padding = -len(order) % num_replicas
    if padding and order:
        order = order + (order * math.ceil(padding / len(order)))[:padding]
    return order[rank::num_replicas]


class ResumableDataLoader(DataLoader):
    """The training DataLoader, resumable mid-epoch.

    Lightning checks a train loader for `state_dict`/`load_state_dict`, saves the former in every
    checkpoint and calls the latter on resume; only then does it resume mid-epoch instead of starting
    the epoch over. The state is (epoch, batches handed out this epoch). Lightning fetches a sized
    loader's batches one at a time, so when ModelCheckpoint saves in `on_train_batch_end` of batch k,
    exactly k + 1 batches were handed out, all of them trained on. The sampler must draw its order
    from (seed, epoch) and support `skip_batches` (LengthGroupedSampler).
    """

    _batches_done = 0  # class defaults: Lightning may re-create the loader from its __init__ arguments
    _resume_at: dict | None = None

    def state_dict(self) -> dict:
        global_batch = self.sampler.batch_size * self.sampler.num_replicas
        return {"epoch": int(self.sampler.epoch), "batches": int(self._batches_done), "global_batch": int(global_batch)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_at = dict(state_dict)

    def __iter__(self):
        # a generator: this runs at the first next(), after Lightning's set_epoch for the epoch
        resume, self._resume_at = self._resume_at, None
        skip = resume["batches"] if resume and resume["epoch"] == self.sampler.epoch else 0
        if skip and resume.get("global_batch") != self.sampler.batch_size * self.sampler.num_replicas:
            rank_zero_warn(
                f"Resuming in mid-epoch with another global batch size ({resume.get('global_batch')} before, now data.batch_size "
                f"{self.sampler.batch_size} x {self.sampler.num_replicas} devices): the epoch's order differs, so its rest is "
                "only approximately the rows not yet seen. Resume with the same batch size and devices for an exact resume."
            )
        self.sampler.skip_batches = skip
        self._batches_done = skip
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch
