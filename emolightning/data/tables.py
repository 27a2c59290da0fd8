"""Reading multi-label emotion tables from disk or the Hub, with errors that name file and line.

A table is ids, texts and a 0/1 label matrix (None for unlabelled files such as the official
`2018-E-c-En-test.txt`, whose label columns hold `NONE`). Label names come from the file's
columns, never from a hard-coded list, so GoEmotions-style sets with other labels work unchanged.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .formats import MISSING, clip, first_line, plain_lines, read_header, read_rows, where

# Official E-c file names, as distributed by the task organisers.
OFFICIAL_SPLITS = {
    "train": ["*-train.txt"],
    "validation": ["*-dev.txt"],
    "test": ["*-test-gold.txt", "*-test.txt"],
}
SPLIT_OPTIONS = {"train": "train_file", "validation": "val_file", "test": "test_file", "predict": "predict_file"}
TRUE_VALUES, FALSE_VALUES = {"1", "true", "1.0"}, {"0", "false", "0.0"}
DEMO_DIR = "builtin:demo"
LINE_BREAKS = re.compile(r"\r\n|[\r\n\t]")
# column names that other data sets give their text and ID, matched case-insensitively when the option is unset and the official one absent
TEXT_NAMES = ("tweet", "text", "sentence", "content", "comment", "utterance", "review", "message", "body")
ID_NAMES = ("id", "tweet_id", "text_id", "idx", "uid", "guid")
OFFICIAL_TEXT, OFFICIAL_ID = "Tweet", "ID"  # the columns of the official E-c files, found first when the options are unset
log = logging.getLogger("lightning.pytorch.emolightning")  # Lightning's handler shows its INFO lines


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
    return str(Path(__file__).parents[1] / "demo")


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


def _detected(header: list[str], official: str, names: tuple[str, ...], suffix: str | None = None) -> list[str]:
    """The column `official` if the header has it; else the header's columns named (in any case) like `official` or one of `names`,
    else those whose name ends with `suffix` (`msg_id`, `sample_id`)."""
    if official in header:
        return [official]
    lowered = {official.lower(), *names}
    found = [c for c in header if str(c).strip().lower() in lowered]
    if not found and suffix:
        found = [c for c in header if str(c).strip().lower().endswith(suffix)]
    return found


def is_plain_text(path: str, text_column: str | None) -> bool:
    """Whether a .txt predict file is one text per line: its first line names no text column (neither `text_column` nor one named like a text)."""
    if Path(path).suffix.lower() != ".txt":
        return False
    first = first_line(path).split("\t")
    return not (text_column in first or _detected(first, OFFICIAL_TEXT, TEXT_NAMES))


def note_once(logged: set | None, key: tuple, message: str) -> None:
    """Log `message` unless `logged` holds `key`: `logged` is the notes one run gave already (a datamodule's, which reads
    a file more than once), None for a caller that reads each file once."""
    if logged is not None:
        if key in logged:
            return
        logged.add(key)
    log.info(message)


def _named_column(path: str, header: list[str], name: str, role: str, option: str, detected: str) -> str:
    """`name`, which the user gave with `option`, if the header has it; else one paragraph naming the file, the column and the columns there are."""
    if name in header:
        return name
    raise DataError(
        f"{where(path, 1)}: there is no {role} column '{name}' (option `{option}`); the columns are {clip(header, 300)}. "
        f"Name one of them with `--{option}`, or leave `{option}` unset (null) so that {detected}."
    )


def chosen_columns(path: str, header: list[str], text_column: str | None, id_column: str | None, logged: set | None = None) -> tuple[str, str | None]:
    """The (text, ID or None for row numbers) columns of a file.

    A column the user names (`text_column`, `id_column`) must be in the header. Left unset (None), the
    text column is the official `Tweet`, else the one column named like text, sentence, message, ...
    in any case; the ID column is `ID`, else the one named like id, idx, ..., else the one whose name
    ends in `_id`, else none (the rows are numbered). An auto-detected choice other than the official
    names is logged (once per file, with `logged`: see `note_once`).
    """
    shown = clip(header, 200)
    if text_column is not None:
        text = _named_column(path, header, text_column, "text", "data.text_column", f"the text column is found by its name ({OFFICIAL_TEXT}, text, ...)")
    else:
        texts = _detected(header, OFFICIAL_TEXT, TEXT_NAMES)
        if len(texts) != 1:
            found = (
                f"several columns that may hold the text ({clip(texts, 120)})"
                if texts
                else f"no text column '{OFFICIAL_TEXT}' (nor one named like {', '.join(TEXT_NAMES)})"
            )
            raise DataError(f"{where(path, 1)}: the header {shown} has {found}. Name the text column with `data.text_column` (or fix the header).")
        text = texts[0]
    if id_column is not None:
        row_id = _named_column(path, header, id_column, "ID", "data.id_column", "the ID column is found by its name (ID, id, ..._id) or the rows are numbered")
        if row_id == text:
            raise DataError(f"{where(path, 1)}: the column '{row_id}' is named as both the text and the ID column. Name another with `data.id_column`.")
    else:
        ids = [c for c in _detected(header, OFFICIAL_ID, ID_NAMES, suffix="_id") if c != text]
        if len(ids) > 1:
            raise DataError(
                f"{where(path, 1)}: the header {shown} has several columns that may hold the ID ({clip(ids, 120)}). Name the ID column with `data.id_column`, "
                "and list the label columns with `data.label_columns` if the other one is not a label."
            )
        row_id = ids[0] if ids else None
    if (text_column is None or id_column is None) and (text, row_id) != (OFFICIAL_TEXT, OFFICIAL_ID):
        note_once(
            logged,
            (path, "columns", text, row_id),
            f"{path}: text column '{text}', ID column {repr(row_id) if row_id else 'none (row numbers)'}, every other column a label "
            "(options `data.text_column`, `data.id_column`, `data.label_columns`).",
        )
    return text, row_id


def output_columns(path: str, text_column: str | None, id_column: str | None, logged: set | None = None) -> tuple[str, str]:
    """The (ID, text) column names a prediction file takes from its input table: the input's own; `id`, `text` for one text per line,
    and for a table without an ID column `ID` beside an official `Tweet`, else `id`."""
    if is_plain_text(path, text_column):
        return "id", "text"
    text, row_id = chosen_columns(path, read_header(path), text_column, id_column, logged)
    return row_id or (OFFICIAL_ID if text == OFFICIAL_TEXT else "id"), text


def _label_value(value, path: str, line: int, column: str) -> int | None:
    if value is MISSING:  # a JSON object may leave out its zero labels
        return 0
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
        f"{where(path, line)}: the label column '{column}' holds {clip(value)}, but labels must be 0 or 1 "
        f"(or NONE in every label column of an unlabelled file). Fix that cell; if '{column}' is not a label, name it with `data.id_column` (an ID) "
        "or `data.text_column` (the text), or list the label columns with `data.label_columns` (by default every column but the ID and the text is a label)."
    )


def _label_list(value, path: str, line: int, column: str, names: list[str]) -> list[int] | None:
    """A list of label ids or names (GoEmotions' `labels: [3, 27]`) -> 0/1 per label; None for NONE."""
    if value is None or value is MISSING:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.upper() == "NONE":
            return None
        items = [item.strip().strip("'\"") for item in text.strip("[]").replace(";", ",").split(",")]
        items = [item for item in items if item]
    elif isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        items = [value]
    labels = [0] * len(names)
    for item in items:
        at = names.index(item) if item in names else int(item) if str(item).lstrip("-").isdigit() else -1
        if not 0 <= at < len(names):
            raise DataError(
                f"{where(path, line)}: the label list column '{column}' holds {clip(item)}, which is neither a label name nor an id "
                f"0..{len(names) - 1} of `data.label_names` ({clip(names, 120)}). Fix that cell or `data.label_names`."
            )
        labels[at] = 1
    return labels


def read_records(
    path: str,
    text_column: str | None = None,
    id_column: str | None = None,
    label_columns: list[str] | None = None,
    allow_plain_text: bool = False,
    unique_ids: bool = True,
    labels_column: str | None = None,
    label_names: list[str] | None = None,
    note_spaces: bool = True,
    logged: set | None = None,
    allow_empty_texts: bool = False,
) -> tuple[list[str], Iterator[Record]]:
    """(label names, lazy records) of one file; every check of `read_table` runs as the rows go by.

    The text and ID columns are those `chosen_columns` gives (a named one must exist). Label columns are
    `label_columns`, or every column but the id and text; or, with `labels_column`, one column holding a
    list of label ids or names (`label_names`). With `allow_plain_text` (a predict file), a .txt file whose
    first line is not a header naming the text column holds one text per line (see `plain_texts`), and
    `labels_column` may be absent. An empty or blank text is an error unless `allow_empty_texts` (predict
    writes a row for every input row; a split to train or test on has none). Tabs and line breaks inside a text become one space each, counted in one log
    line (`note_spaces`; once per file with `logged`, see `note_once`); nothing else in a text changes. Memory stays flat, except that the
    duplicate-ID check keeps every ID seen (`unique_ids=False` skips it).
    """
    if not os.path.isfile(path):
        raise DataError(f"The data file '{path}' does not exist. Check the path (relative paths start at the current directory).")
    if allow_plain_text and is_plain_text(path, text_column):
        return [], plain_texts(path, note_spaces, logged)
    header, rows = read_rows(path)
    shown = clip(header, 200)
    text_column, id_column = chosen_columns(path, header, text_column, id_column, logged)
    if labels_column is not None:
        if label_columns:
            raise ConfigError(
                "`data.label_columns` (one 0/1 column per label) and `data.labels_column` (one column holding a list of labels) exclude each other: set one."
            )
        if not label_names:
            raise ConfigError(f"`data.labels_column` '{labels_column}' holds label ids or names: set `data.label_names` to the label names, in id order.")
        label_names = list(label_names)
        if labels_column not in header:
            if not allow_plain_text:
                raise DataError(
                    f"{where(path, 1)}: there is no label list column '{labels_column}' (option `data.labels_column`); the columns are {shown}. "
                    "Name one of them with `--data.labels_column`, or unset it to read one 0/1 column per label."
                )
            label_names = []  # a file without labels, for predict
    else:
        if label_columns is None:
            if unnamed := [i + 1 for i, c in enumerate(header) if not str(c).strip() and c not in (text_column, id_column)]:
                raise DataError(
                    f"{where(path, 1)}: column {unnamed[0]} of the header has no name (a pandas index column? write the table with `index=False`). "
                    "Remove it, or list the label columns with `data.label_columns`."
                )
            label_columns = [c for c in header if c not in (text_column, id_column)]
        missing = [c for c in label_columns if c not in header]
        if allow_plain_text and len(missing) == len(label_columns):  # a predict table without labels
            label_columns = missing = []
        if missing:
            raise DataError(f"{where(path, 1)}: the header {shown} lacks the label column(s) {clip(missing, 120)}. Fix the header or `data.label_columns`.")
        if not label_columns and not allow_plain_text:
            raise DataError(f"{where(path, 1)}: the header {shown} has no label columns. Add one 0/1 column per emotion.")
        label_names = list(label_columns)
    rows = _checked_rows(path, rows, text_column, id_column, label_names, labels_column, unique_ids, allow_empty_texts)
    return label_names, _spaced_rows(path, rows, f"{path} has a header but no rows.", note_spaces, logged)


def spaced(text: str) -> str:
    """Tabs and line breaks (LF, CR, CRLF) -> one space each: what an E-c file can hold."""
    return LINE_BREAKS.sub(" ", text)


def _note(path: str, count: int, logged: set | None) -> None:
    if count:
        message = f"{path}: {count} text{'s' if count > 1 else ''} held tabs or line breaks; each was read as a space (an E-c file cannot hold them)."
        note_once(logged, (path, "spaces"), message)


def plain_texts(path: str, note_spaces: bool = True, logged: set | None = None) -> Iterator[Record]:
    """A .txt with one text per line and no header: every line is a row, blank ones included, and its ID
    is its line number, so no ID ever shifts. A blank line is predicted as an empty text."""
    rows = ((str(number), line, None) for number, line in plain_lines(path))
    return _spaced_rows(path, rows, f"{path} holds no text: write one text per line.", note_spaces, logged)


def _spaced_rows(path: str, records: Iterator[Record], empty: str, note_spaces: bool, logged: set | None) -> Iterator[Record]:
    """`records` with each text's tabs and line breaks made spaces (counted, and noted once the file is read); `empty` is the error for no row."""
    changed = count = 0
    for row_id, text, values in records:
        fixed = spaced(text)
        changed, count = changed + (fixed != text), count + 1
        yield row_id, fixed, values
    if not count:
        raise DataError(empty)
    if note_spaces:
        _note(path, changed, logged)


def _checked_rows(
    path: str,
    rows,
    text_column: str,
    id_column: str | None,
    label_names: list[str],
    labels_column: str | None,
    unique_ids: bool,
    allow_empty_texts: bool = False,
) -> Iterator[Record]:
    """(ID, text as read, labels) of every row, each checked: a text (unless `allow_empty_texts`), a unique ID, labels all 0/1 or all NONE."""
    seen: dict[str, int] = {}
    labelled = None  # whether the file carries labels, decided by its first row
    for number, (line, row) in enumerate(rows, start=1):
        text = row[text_column]
        text = "" if text is None or text is MISSING else str(text)
        if not text.strip() and not allow_empty_texts:
            raise DataError(f"{where(path, line)}: the text is empty. Remove the row or fill in the text.")
        if id_column is None:
            row_id = str(number)
        elif row[id_column] is MISSING:  # a JSON object without the key: a row number could equal another row's ID
            raise DataError(f"{where(path, line)}: this object has no ID ('{id_column}'). Give every row its ID, or none of them.")
        else:
            row_id = str(row[id_column])
        if unique_ids:
            if row_id in seen:
                raise DataError(
                    f"{where(path, line)}: the ID {clip(row_id)} already appears on line {seen[row_id]} (column '{id_column}'). IDs must be unique; "
                    "rename or remove one, or name the ID column with `data.id_column`."
                )
            seen[row_id] = line
        if labels_column is not None:
            values = _label_list(row[labels_column], path, line, labels_column, label_names) if label_names else None
        else:
            values = [_label_value(row[c], path, line, c) for c in label_names]
            values = None if not values or None in values else values
            if values is None and label_names and any(v is not None for v in (_label_value(row[c], path, line, c) for c in label_names)):
                raise DataError(f"{where(path, line)}: some label columns hold NONE and others 0/1. A row is either fully labelled or fully unlabelled.")
        if labelled is None:
            labelled = values is not None
        elif (values is not None) != labelled:
            raise DataError(
                f"{where(path, line)}: this row is {'' if values is not None else 'un'}labelled, unlike the rows before it. A file is either fully labelled or fully unlabelled (NONE)."
            )
        yield row_id, text, values


def file_records(
    path: str,
    text_column: str | None,
    id_column: str | None,
    label_columns: list[str] | None,
    unique_ids: bool = True,
    labels_column: str | None = None,
    label_names: list[str] | None = None,
    logged: set | None = None,
) -> Iterator[Record]:
    """The rows of a predict file (a table, or one text per line; empty texts included), read lazily; the checking pass (`unique_ids`) also logs
    the texts whose tabs/line breaks became spaces."""
    return read_records(
        path,
        text_column,
        id_column,
        label_columns,
        allow_plain_text=True,
        unique_ids=unique_ids,
        labels_column=labels_column,
        label_names=label_names,
        note_spaces=unique_ids,
        logged=logged,
        allow_empty_texts=True,
    )[1]


def read_table(
    path: str,
    text_column: str | None = None,
    id_column: str | None = None,
    label_columns: list[str] | None = None,
    labels_column: str | None = None,
    label_names: list[str] | None = None,
    logged: set | None = None,
    allow_empty_texts: bool = False,
) -> Table:
    """Read one split whole (see `read_records` for the columns and the checks); a one-text-per-line file is `file_records`' alone."""
    names, records = read_records(
        path, text_column, id_column, label_columns, labels_column=labels_column, label_names=label_names, logged=logged, allow_empty_texts=allow_empty_texts
    )
    ids, texts, labels = [], [], []
    for row_id, text, values in records:
        ids.append(row_id)
        texts.append(text)
        labels.append(values)
    unlabelled = not names or labels[0] is None  # read_records raised if there were no rows
    matrix = None if unlabelled else np.asarray(labels, dtype=np.uint8)
    return Table(ids, texts, matrix, names, path)


def load_hub(name: str, config: str | None):
    """`datasets.load_dataset(name, config)`; without network (or a wrong name) one paragraph that says what to do instead."""
    from datasets import load_dataset

    try:
        return load_dataset(name, config)
    except Exception as err:  # offline, unknown name or config, no access: the user's next step is the same
        first = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"Could not load the Hub dataset '{name}' (config {config!r}; options `data.hub_dataset`, `data.hub_config`): "
            f"{type(err).__name__}: {clip(first, 160)[1:-1]}. Without network, use local files: point `data.data_dir` at the folder "
            "holding the official E-c files (2018-E-c-En-train.txt, -dev.txt, -test-gold.txt), or name tables with "
            "`data.train_file`, `data.val_file` and `data.test_file`; `--data.data_dir builtin:demo` trains on the bundled demo set."
        ) from None


def table_from_hub(
    dataset,
    split_name: str,
    text_column: str | None,
    id_column: str | None,
    label_columns: list[str] | None,
    labels_column: str | None = None,
    label_names: list[str] | None = None,
) -> Table:
    """Convert one split of a `datasets` DatasetDict: bool or 0/1 label columns, or a column of label lists
    (`labels_column`) whose names come from its ClassLabel feature or `label_names`."""
    split = dataset[split_name]
    source = f"hub:{split_name}"
    text_column, id_column = chosen_columns(source, split.column_names, text_column, id_column)  # a named column must exist; unset ones are detected
    if labels_column and labels_column not in split.column_names:
        raise DataError(
            f"The Hub split '{split_name}' has no column '{labels_column}' (its columns: {clip(split.column_names, 200)}). Set `data.labels_column` to one of them."
        )
    texts = [spaced(str(text)) for text in split[text_column]]
    ids = [str(i) for i in split[id_column]] if id_column is not None else [str(i) for i in range(len(split))]
    if labels_column:
        if not label_names:
            feature = getattr(split.features[labels_column], "feature", None)  # Sequence(ClassLabel) / List(ClassLabel)
            label_names = list(getattr(feature, "names", None) or [])
        if not label_names:
            raise ConfigError(f"The Hub column '{labels_column}' holds label ids without names: set `data.label_names` to the label names, in id order.")
        rows = [_label_list(value, source, line, labels_column, list(label_names)) for line, value in enumerate(split[labels_column], start=1)]
        return Table(ids, texts, np.asarray(rows, dtype=np.uint8), list(label_names), source)
    if label_columns is None:
        label_columns = [c for c in split.column_names if c not in (text_column, id_column)]
    labels = np.stack([np.asarray(split[c], dtype=np.uint8) for c in label_columns], axis=1)
    return Table(ids, texts, labels, list(label_columns), source)


def label_difference(found: list[str], expected: list[str]) -> str | None:
    """None when `found` holds the labels of `expected` (in any order), else `; missing: [...]; extra: [...]`, for an error message."""
    if sorted(found) == sorted(expected):
        return None
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    return f"{f'; missing: {clip(missing, 120)}' if missing else ''}{f'; extra: {clip(extra, 120)}' if extra else ''}"


def aligned_labels(table: Table, label_names: list[str]) -> Table:
    """`table` with its label columns in the order of `label_names` (the training split's); refuses other labels."""
    if table.labels is None or table.label_names == label_names:
        return table
    if (difference := label_difference(table.label_names, label_names)) is not None:
        raise DataError(
            f"{table.source}: its labels differ from the training split's {clip(label_names, 300)}{difference}. "
            "Every split needs the same label columns (in any order); fix the header, or list the labels to use with `data.label_columns`."
        )
    order = [table.label_names.index(name) for name in label_names]
    return Table(table.ids, table.texts, table.labels[:, order], list(label_names), table.source)
