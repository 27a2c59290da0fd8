"""Several processes and clusters, on a CPU: collectives as NCCL allows them, per-rank state, SLURM.

NCCL (the GPU backend) reduces and gathers only GPU tensors, where gloo (CPU) takes any: a CPU
test passes code that fails on the first multi-GPU run. On a CPU every tensor is a CPU tensor, the
ones a GPU run would hold on the device included, so no CPU test tells a tensor left on the host
from one on the device; a step that must use no tensor collective at all can be checked, though.
`NcclLikeStrategy` below refuses every tensor collective with NCCL's words (the prediction writer
holds host tensors only, which NCCL would refuse) and logs the barriers and object broadcasts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from emolightning.data.stream import PredictStream
from emolightning.errors import DataError
from emolightning.inference.prediction_writer import PredictionFileWriter

from conftest import LABELS

TESTS = Path(__file__).resolve().parents[1]


class NcclLikeStrategy:
    """A rank's strategy as the PredictionFileWriter sees it: the collectives it calls are logged; tensor ones fail like NCCL on CPU tensors."""

    def __init__(self, rank: int, from_rank_zero=None):
        self.rank, self.calls, self.from_rank_zero = rank, [], from_rank_zero

    def reduce(self, tensor, reduce_op=None):
        raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")  # NCCL's words

    all_gather = reduce

    def barrier(self, name=None):
        self.calls.append(("barrier", name))

    def broadcast(self, obj, src=0):
        self.calls.append(("broadcast", src))
        return obj if self.rank == 0 else self.from_rank_zero


class Trainer:
    def __init__(self, rank: int, world_size: int, strategy: NcclLikeStrategy):
        self.global_rank, self.world_size, self.is_global_zero, self.strategy = rank, world_size, rank == 0, strategy


def rank_predicts(tmp_path: Path, rank: int, world_size: int, rows: list[tuple[str, str]], from_rank_zero=None, write_part: bool = True):
    """One rank's PredictionFileWriter over `rows` (batches of 2, one chunk), with predictions made up here."""
    stream = PredictStream(lambda: iter([(i, t, None) for i, t in rows]), len(rows), "unused", 64, 2, 8, rank, world_size)
    # write_part=False: as if the rank ran on another node, whose disk (here another folder) rank 0 cannot see
    folder = tmp_path if write_part else tmp_path / "other-node"
    writer, strategy = PredictionFileWriter(str(folder / "pred.txt"), layout=lambda: stream), NcclLikeStrategy(rank, from_rank_zero)
    trainer, module = Trainer(rank, world_size, strategy), type("Module", (), {"label_names": LABELS})()
    writer.on_predict_epoch_start(trainer, module)
    for b in range(rank, stream.num_batches, world_size):
        members = list(range(2 * b, min(2 * b + 2, len(rows))))
        preds = torch.tensor([[k % 2] * len(LABELS) for k in members], dtype=torch.uint8)
        batch = {"chunk": 0, "ids": [rows[k][0] for k in members], "texts": [rows[k][1] for k in members], "truncated": 0}
        writer.write_on_batch_end(trainer, module, {"preds": preds, "probs": preds.float(), "index": torch.tensor(members)}, None, batch, b, 0)
    return writer, trainer, module


def test_predict_end_uses_no_tensor_collective_and_a_merge_failure_reaches_every_rank(tmp_path):
    rows = [(f"id{k}", f"text {k}") for k in range(7)]
    # success: rank 1 writes its part, rank 0 merges; neither reduces a tensor (NCCL would refuse a CPU one)
    one = rank_predicts(tmp_path, 1, 2, rows)
    one[0].on_predict_epoch_end(one[1], one[2])
    zero = rank_predicts(tmp_path, 0, 2, rows)
    zero[0].on_predict_epoch_end(zero[1], zero[2])
    lines = (tmp_path / "pred.txt").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["ID", "Tweet", "anger"] and [line.split("\t")[0] for line in lines[1:]] == [r[0] for r in rows]
    assert [line.split("\t")[2] for line in lines[1:]] == ["0", "1", "0", "1", "0", "1", "0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.txt"]  # no part or count file left
    assert zero[1].strategy.calls == one[1].strategy.calls  # the same collectives, in the same order

    # failure on rank 0 alone (it cannot see rank 1's part): rank 0 raises, and tells rank 1, which raises too
    (tmp_path / "pred.txt").unlink()
    one = rank_predicts(tmp_path, 1, 2, rows, write_part=False)
    zero = rank_predicts(tmp_path, 0, 2, rows)
    with pytest.raises(DataError, match="cannot see the prediction part file") as raised:
        zero[0].on_predict_epoch_end(zero[1], zero[2])
    one[1].strategy.from_rank_zero = str(raised.value)
    with pytest.raises(DataError, match="Rank 0 could not write the prediction file .*pred.txt: Rank 0 cannot see"):
        one[0].on_predict_epoch_end(one[1], one[2])
    assert zero[1].strategy.calls == one[1].strategy.calls == [("barrier", "prediction parts written"), ("broadcast", 0)]
    assert not (tmp_path / "pred.txt").exists()


def test_a_rank_whose_part_meets_a_full_disk_reaches_the_barrier_and_every_rank_stops(tmp_path, monkeypatch):
    import errno

    from emolightning import files
    from emolightning.errors import StorageError

    rows = [(f"id{k}", f"text {k}") for k in range(7)]
    (tmp_path / "pred.txt").write_text("previous\n")
    part = str(tmp_path / ".pred.txt.part1.tmp")
    real = os.fsync

    def fsync(fd):  # rank 1's part, complete but for its fsync, meets a full disk
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == os.path.basename(files.temporary_name(part)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    # rank 1 ends first, as it would in the barrier's wait (what rank 0 broadcasts after it does not change its own error)
    one = rank_predicts(tmp_path, 1, 2, rows, from_rank_zero="Rank 0 cannot see the prediction part file(s)")
    with pytest.raises(StorageError, match=f"Could not write '{part}': the disk is full"):  # its own paragraph, after the barrier
        one[0].on_predict_epoch_end(one[1], one[2])
    zero = rank_predicts(tmp_path, 0, 2, rows)
    with pytest.raises(DataError, match="cannot see the prediction part file.*could not write its part") as raised:
        zero[0].on_predict_epoch_end(zero[1], zero[2])
    zero[0].on_exception(zero[1], zero[2], raised.value)  # what Lightning calls next
    assert zero[1].strategy.calls == one[1].strategy.calls == [("barrier", "prediction parts written"), ("broadcast", 0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.txt"] and (tmp_path / "pred.txt").read_text() == "previous\n"


def test_hub_label_names_are_read_by_local_rank_zero_only_and_shared(tmp_path, monkeypatch):
    import threading

    from emolightning.data.datamodule import EmotionDataModule
    from emolightning.data.tables import Table

    reads = []

    def hub_read(self, split):  # stands in for load_dataset: the Hub, which only one rank per node may touch
        reads.append((os.environ.get("LOCAL_RANK"), split))
        return Table(["1"], ["text"], None, ["joy", "anger"], "hub")

    monkeypatch.setattr(EmotionDataModule, "load_table", hub_read)
    cache = str(tmp_path / "cache")
    # rank 1 starts first (under torchrun/SLURM nothing orders them) and waits for rank 0's file
    monkeypatch.setenv("LOCAL_RANK", "1")
    found = {}
    waiting = threading.Thread(target=lambda: found.setdefault("rank1", EmotionDataModule(cache_dir=cache).label_names))
    waiting.start()
    waiting.join(timeout=1.5)
    assert waiting.is_alive() and reads == []  # still waiting, and it did not read the Hub itself
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert EmotionDataModule(cache_dir=cache).label_names == ["joy", "anger"]
    waiting.join(timeout=10)
    assert found["rank1"] == ["joy", "anger"]
    assert reads == [("0", "train")]  # one read, by local rank 0
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert EmotionDataModule(cache_dir=cache).label_names == ["joy", "anger"] and len(reads) == 1


def _rng_rank(rank: int, folder: str, port: int) -> None:
    """One of 2 gloo ranks: save the gathered RNG states (rank 0 writes), draw, scramble, restore from the file, draw again."""
    import random

    import numpy as np
    import torch.distributed as dist

    from emolightning.training.resume import ExactResume

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(10 + rank), random.seed(20 + rank), np.random.seed(30 + rank)  # the ranks' streams differ, as dropout makes them
        callback = ExactResume()
        callback._device = torch.device("cpu")
        callback._rank = rank
        state = callback.state_dict()
        if rank == 0:
            torch.save({"callbacks": {"ExactResume": state}}, os.path.join(folder, "ckpt.pt"))
        dist.barrier()
        expected = (torch.rand(4).tolist(), random.random(), np.random.rand(2).tolist())
        torch.manual_seed(99), random.seed(99), np.random.seed(99)
        resumed = ExactResume()
        resumed._rank = rank
        resumed.load_state_dict(torch.load(os.path.join(folder, "ckpt.pt"), weights_only=True)["callbacks"]["ExactResume"])
        resumed._restore_rng(type("Module", (), {"device": torch.device("cpu")})())
        again = (torch.rand(4).tolist(), random.random(), np.random.rand(2).tolist())
        Path(folder, f"rank{rank}.json").write_text(json.dumps({"expected": expected, "again": again}))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # several processes or a full fit: CI runs the slow set too
def test_exact_resume_restores_each_ranks_own_random_state(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rng_rank, args=(str(tmp_path), free_port()), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["expected"] != results[1]["expected"]  # the two ranks' streams differ ...
    for r in results:
        assert r["again"] == r["expected"]  # ... and each rank continues its own
