"""Reading multi-label emotion tables from disk or the Hub, with errors that name file and line.

A table is ids, texts and a 0/1 label matrix (None for unlabelled files such as the official
`2018-E-c-En-test.txt`, whose label columns hold `NONE`). Label names come from the file's
columns, never from a hard-coded list, so GoEmotions-style sets with other labels work unchanged.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

# Official E-c file names, as distributed by the task organisers.
OFFICIAL_SPLITS = {
    "train": ["*-train.txt"],
    "validation": ["*-dev.txt"],
    "test": ["*-test-gold.txt", "*-test.txt"],
}
SPLIT_OPTIONS = {"train": "train_file", "validation": "val_file", "test": "test_file", "predict": "predict_file"}
TRUE_VALUES, FALSE_VALUES = {"1", "true", "1.0"}, {"0", "false", "0.0"}
DEMO_DIR = "builtin:demo"


Record = tuple[str, str, "list[int] | None"]  # (id, text, 0/1 labels or None when unlabelled)


@dataclass
class Table:
    ids: list[str]
    texts: list[str]
    labels: np.ndarray | None  # (N, L) uint8, or None when the file carries no labels
    label_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def demo_dir() -> str:
    return str(Path(__file__).parent / "demo")


def resolve_data_dir(data_dir: str) -> str:
    if data_dir == DEMO_DIR:
        return demo_dir()
    if not os.path.isdir(data_dir):
        raise DataError(
            f"The data directory '{data_dir}' (option `data.data_dir`) does not exist. Point it at the "
            "folder holding the official E-c files (2018-E-c-En-train.txt, 2018-E-c-En-dev.txt, "
            f"2018-E-c-En-test-gold.txt), use '{DEMO_DIR}' for the bundled demo set, or leave it unset "
            "to download the data from the Hugging Face Hub."
        )
    return data_dir


def find_split_file(data_dir: str, split: str) -> str | None:
    """The official file for `split` in `data_dir`, or None when it is not there."""
    for pattern in OFFICIAL_SPLITS[split]:
        matches = sorted(glob.glob(os.path.join(resolve_data_dir(data_dir), pattern)))
        if len(matches) > 1:
            raise DataError(
                f"The data directory '{data_dir}' holds several files for the {split} split "
                f"({', '.join(os.path.basename(m) for m in matches)}). Keep one, or name it with "
                f"`data.{SPLIT_OPTIONS[split]}`."
            )
        if matches:
            return matches[0]
    return None


def _decode_lines(path: str) -> Iterator[str]:
    """The file's lines, decoded one at a time (a 100k-line file is never held whole)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            line = line.removesuffix(b"\n")
            try:
                yield line.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}, line {number}: bytes that are not UTF-8 ({line[max(0, err.start - 10):err.end + 10]!r}). "
                    "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)."
                ) from None


def read_header(path: str) -> list[str]:
    """The column names of a table file (its first line, or its first JSON object's keys)."""
    return _read_rows(path)[0]


def _read_rows(path: str) -> tuple[list[str], Iterator[tuple[int, list]]]:
    """(header, lazy (line number, fields) rows) of a tsv/txt/csv/jsonl/parquet file."""
    suffix = Path(path).suffix.lower()
    if suffix in (".txt", ".tsv", ".csv"):
        lines = _decode_lines(path)
        # the official files are tab-separated with no quoting: a quote is part of a tweet
        parsed = csv.reader(lines) if suffix == ".csv" else (line.split("\t") for line in lines)
        header = next(parsed, None)
        if header is None:
            raise DataError(f"{path} is empty: it needs a header line and one row per text.")
        return header, ((n, row) for n, row in enumerate(parsed, start=2) if row != [""] and row != [])
    if suffix in (".jsonl", ".json"):
        records = ((n, line) for n, line in enumerate(_decode_lines(path), start=1) if line.strip())

        def parse(n: int, line: str) -> dict:
            try:
                return json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {n}: not valid JSON ({err.msg}). Each line must be one JSON object.") from None

        first = next(records, None)
        if first is None:
            raise DataError(f"{path} is empty: it needs one JSON object per line.")
        header = list(parse(*first))
        rows = itertools.chain([first], records)
        return header, ((n, [record.get(column) for column in header]) for n, record in ((n, parse(n, line)) for n, line in rows))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        header = file.schema_arrow.names
        batches = (batch.to_pylist() for batch in file.iter_batches(batch_size=4096))
        return header, ((n, [record[c] for c in header]) for n, record in enumerate(itertools.chain.from_iterable(batches), start=1))
    raise DataError(f"{path}: unknown file type '{suffix}'. Use .txt/.tsv (tab-separated), .csv, .jsonl or .parquet.")


def _label_value(value, path: str, line: int, column: str) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    text = str(value).strip().lower()
    if text in TRUE_VALUES:
        return 1
    if text in FALSE_VALUES:
        return 0
    if text == "none":
        return None
    raise DataError(
        f"{path}, line {line}: the label column '{column}' holds {value!r}, but labels must be 0 or 1 "
        "(or NONE in every label column of an unlabelled file). Fix that cell."
    )


def read_records(
    path: str,
    text_column: str = "Tweet",
    id_column: str | None = "ID",
    label_columns: list[str] | None = None,
    allow_plain_text: bool = False,
    unique_ids: bool = True,
) -> tuple[list[str], Iterator[Record]]:
    """(label names, lazy records) of one file; every check of `read_table` runs as the rows go by.

    Label columns are `label_columns`, or every column but the id and text. Memory stays flat,
    except that the duplicate-ID check keeps every ID seen (`unique_ids=False` skips it).
    """
    if not os.path.isfile(path):
        raise DataError(f"The data file '{path}' does not exist. Check the path (relative paths start at the current directory).")
    header, rows = _read_rows(path)
    if text_column not in header:
        if allow_plain_text and Path(path).suffix.lower() == ".txt" and len(header) == 1:
            return [], _plain_texts(path)
        raise DataError(
            f"{path}, line 1: the header {header} has no text column '{text_column}'. Fix the header "
            "(the official E-c header is ID, Tweet, then the 11 emotions) or set `data.text_column`."
        )
    if label_columns is None:
        label_columns = [c for c in header if c not in (text_column, id_column)]
    missing = [c for c in label_columns if c not in header]
    if missing:
        raise DataError(f"{path}, line 1: the header {header} lacks the label column(s) {missing}. Fix the header or `data.label_columns`.")
    if not label_columns and not allow_plain_text:
        raise DataError(f"{path}, line 1: the header {header} has no label columns. Add one 0/1 column per emotion.")
    return list(label_columns), _records(path, header, rows, text_column, id_column, list(label_columns), unique_ids)


def _plain_texts(path: str) -> Iterator[Record]:
    """A .txt with one text per line and no header: IDs are line counts, blank lines skipped."""
    texts = (line for line in _decode_lines(path) if line.strip())
    count = 0
    for count, text in enumerate(texts, start=1):
        yield str(count), text, None
    if not count:
        raise DataError(f"{path} holds no text: write one text per line.")


def _records(path: str, header: list[str], rows, text_column: str, id_column: str | None, label_columns: list[str], unique_ids: bool) -> Iterator[Record]:
    text_at = header.index(text_column)
    id_at = header.index(id_column) if id_column in header else None
    label_at = [header.index(c) for c in label_columns]
    seen: dict[str, int] = {}
    labelled = None  # whether the file carries labels, decided by its first row
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {line}: {len(row)} fields where the header has {len(header)}. "
                "A tab or a line break inside a text splits it; remove it from that text."
            )
        text = row[text_at]
        if text is None or not str(text).strip():
            raise DataError(f"{path}, line {line}: the text is empty. Remove the row or fill in the text.")
        row_id = str(row[id_at]) if id_at is not None else str(line - 1)
        if unique_ids:
            if row_id in seen:
                raise DataError(f"{path}, line {line}: the ID '{row_id}' already appears on line {seen[row_id]}. IDs must be unique; rename or remove one.")
            seen[row_id] = line
        values = [_label_value(row[i], path, line, c) for i, c in zip(label_at, label_columns)]
        row_labelled = None not in values
        if labelled is None:
            labelled = row_labelled
        elif row_labelled != labelled:
            raise DataError(f"{path}, line {line}: some rows have NONE labels and others 0/1. A file is either fully labelled or fully unlabelled.")
        yield row_id, str(text), values if row_labelled else None
    if labelled is None:
        raise DataError(f"{path} has a header but no rows.")


def file_records(path: str, text_column: str, id_column: str | None, label_columns: list[str] | None, unique_ids: bool = True) -> Iterator[Record]:
    """The rows of a predict file (a table, or one text per line), read lazily."""
    return read_records(path, text_column, id_column, label_columns, allow_plain_text=True, unique_ids=unique_ids)[1]


def read_table(path: str, text_column: str = "Tweet", id_column: str | None = "ID", label_columns: list[str] | None = None) -> Table:
    """Read one split whole (see `read_records` for the columns and the checks); a one-text-per-line file is `file_records`' alone."""
    label_names, records = read_records(path, text_column, id_column, label_columns)
    ids, texts, labels = [], [], []
    for row_id, text, values in records:
        ids.append(row_id)
        texts.append(text)
        labels.append(values)
    unlabelled = not label_names or labels[0] is None  # read_records raised if there were no rows
    matrix = None if unlabelled else np.asarray(labels, dtype=np.uint8)
    return Table(ids, texts, matrix, label_names, path)


def table_from_hub(dataset, split_name: str, text_column: str, id_column: str | None, label_columns: list[str] | None) -> Table:
    """Convert one split of a `datasets` DatasetDict (bool or 0/1 label columns)."""
    split = dataset[split_name]
    if label_columns is None:
        label_columns = [c for c in split.column_names if c not in (text_column, id_column)]
    labels = np.stack([np.asarray(split[c], dtype=np.uint8) for c in label_columns], axis=1)
    ids = [str(i) for i in split[id_column]] if id_column in split.column_names else [str(i) for i in range(len(split))]
    return Table(ids, list(split[text_column]), labels, list(label_columns), f"hub:{split_name}")
