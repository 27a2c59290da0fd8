"""Reading what an offline W&B run wrote: its run-<id>.wandb record log.

wandb >= 0.18 writes config and metrics of an offline run only into that file (no config.yaml or
wandb-summary.json until `wandb sync`). The file is a LevelDB-style log: a 7-byte header
(":W&B", magic, version), then 32 KiB blocks of chunks (crc32, length, type: 1 full, 2 first,
3 middle, 4 last), each whole record a `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import glob
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict:
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


@dataclass
class OfflineRun:
    path: Path  # the offline-run-<time>-<id> directory
    run_config: dict = field(default_factory=dict)  # config sent with the run record (a sweep's parameters)
    config: dict = field(default_factory=dict)  # config updates (log_hyperparams)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def files(self) -> Path:
        return self.path / "files"


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    run_dir = Path(run_dir)
    (wandb_file,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(run_dir)
    for record in records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_config.update({k: v for k, v in _items(record.run.config.update).items() if k != "_wandb"})
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
    return run


def offline_runs(save_dir: str | Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(Path(save_dir) / "wandb" / "offline-run-*")))
