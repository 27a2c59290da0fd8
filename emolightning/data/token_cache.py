"""The token cache: one tokenised split in a NumPy .npz of plain int, float and byte arrays, so it loads without unpickling anything.

A split's token ids are stored flat with each row's length (ragged rows need no padding), its texts
and row IDs as UTF-8 bytes with their lengths, and the few scalars (`truncated`, `source`) as JSON.
`np.load(..., allow_pickle=False)` reads it: a cache file from elsewhere can hold data, never code.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from ..files import write_atomically

FORMAT = "emolightning-token-cache"


def _ragged(rows: list[torch.Tensor]) -> dict[str, np.ndarray]:
    return {"flat": np.concatenate([row.numpy() for row in rows]) if rows else np.zeros(0, np.int32), "lengths": np.array([len(r) for r in rows], np.int64)}


def _unragged(flat: np.ndarray, lengths: np.ndarray) -> list[torch.Tensor]:
    return list(torch.from_numpy(flat).split(lengths.tolist()))


def _strings(values: list[str]) -> dict[str, np.ndarray]:
    # surrogatepass: a JSON table may hold a lone surrogate escape ("\ud83d"), which plain UTF-8 cannot encode
    encoded = [value.encode("utf-8", "surrogatepass") for value in values]
    return {"flat": np.frombuffer(b"".join(encoded), np.uint8), "lengths": np.array([len(e) for e in encoded], np.int64)}


def _unstrings(flat: np.ndarray, lengths: np.ndarray) -> list[str]:
    data, ends = flat.tobytes(), np.cumsum(lengths).tolist()
    return [data[end - n : end].decode("utf-8", "surrogatepass") for end, n in zip(ends, lengths.tolist())]


def write_cache(path: str, data: dict) -> None:
    """Write a tokenised split (datamodule's dict: input_ids, labels, ids, texts, truncated, source[, teacher_input_ids]) to `path` atomically."""
    arrays = {"meta": np.frombuffer(json.dumps({"format": FORMAT, "truncated": data["truncated"], "source": data["source"]}).encode(), np.uint8)}
    for name, parts in (("input_ids", _ragged(data["input_ids"])), ("ids", _strings(data["ids"])), ("texts", _strings(data["texts"]))):
        arrays.update({f"{name}_{key}": value for key, value in parts.items()})
    if data["labels"] is not None:
        arrays["labels"] = data["labels"].numpy()
    if data.get("teacher_input_ids") is not None:
        arrays.update({f"teacher_input_ids_{key}": value for key, value in _ragged(data["teacher_input_ids"]).items()})
    serialized = io.BytesIO()  # first in memory: a full disk's message can say how much the file needs
    np.savez(serialized, **arrays)
    write_atomically(path, lambda f: f.write(serialized.getbuffer()), needed=serialized.tell())  # a reader never sees half a cache file


def read_cache(path: str) -> dict:
    """The dict `write_cache` wrote; any damage (a file cut short, another kind of file) raises, for the caller to rebuild it."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        if meta.get("format") != FORMAT:
            raise ValueError(f"not an emolightning token cache (format {meta.get('format')!r})")
        data = {
            "input_ids": _unragged(npz["input_ids_flat"], npz["input_ids_lengths"]),
            "labels": torch.from_numpy(npz["labels"]) if "labels" in npz.files else None,
            "ids": _unstrings(npz["ids_flat"], npz["ids_lengths"]),
            "texts": _unstrings(npz["texts_flat"], npz["texts_lengths"]),
            "truncated": meta["truncated"],
            "source": meta["source"],
        }
        if "teacher_input_ids_flat" in npz.files:
            data["teacher_input_ids"] = _unragged(npz["teacher_input_ids_flat"], npz["teacher_input_ids_lengths"])
    return data
