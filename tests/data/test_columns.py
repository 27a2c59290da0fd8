"""The columns of the user's own tables, in every format: a column the user names must be there, only unset options are
detected, and a predict file keeps its empty texts (a row out for every row in) while a training file refuses them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from emolightning.data.datamodule import EmotionDataModule
from emolightning.data.tables import file_records, output_columns, read_table
from emolightning.errors import DataError

FORMATS = ["csv", "tsv", "txt", "jsonl", "json", "parquet"]
HEADER = ["msg_id", "message", "angry", "happy"]


def write_table(path: Path, header: list[str], rows: list[list]) -> Path:
    """`rows` under `header` in the format of `path`'s suffix, written as pandas, the csv module or a JSON writer would."""
    suffix = path.suffix
    if suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
    elif suffix in (".tsv", ".txt"):
        path.write_text("".join("\t".join(map(str, row)) + "\n" for row in [header, *rows]), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps([dict(zip(header, row)) for row in rows]), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([dict(zip(header, row)) for row in rows]), path)
    return path


ROWS = [["m1", "so happy", 0, 1], ["m2", "so cross", 1, 0], ["m3", "meh", 0, 0]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("option, name, role", [("text_column", "text", "text"), ("id_column", "id", "ID")])
def test_a_named_column_that_is_not_there_is_an_error_naming_the_file_and_the_columns(tmp_path, fmt, option, name, role):
    """`--data.text_column text` on a file whose text is `message`, `--data.id_column id` on one with `msg_id`: never another column instead."""
    path = write_table(tmp_path / f"train.{fmt}", HEADER, ROWS)
    with pytest.raises(DataError) as err:
        read_table(str(path), **{option: name})
    message = str(err.value)
    assert f"train.{fmt}, {'row' if fmt == 'parquet' else 'line'} 1: there is no {role} column '{name}' (option `data.{option}`)" in message
    assert "'msg_id', 'message', 'angry', 'happy'" in message and "\n" not in message
    # the predict path too (a table, and a .txt whose first line is a header)
    with pytest.raises(DataError, match=re.escape(f"no {role} column '{name}'")):
        list(file_records(str(path), **{"text_column": None, "id_column": None, option: name}, label_columns=None))


@pytest.mark.parametrize("fmt", FORMATS)
def test_unset_options_detect_the_columns_and_named_ones_are_used(tmp_path, fmt):
    path = write_table(tmp_path / f"train.{fmt}", HEADER, ROWS)
    detected = read_table(str(path))  # `message` is named like a text, `msg_id` ends in _id
    assert detected.ids == ["m1", "m2", "m3"] and detected.texts == ["so happy", "so cross", "meh"] and detected.label_names == ["angry", "happy"]
    named = read_table(str(path), text_column="message", id_column="msg_id")
    assert (named.ids, named.texts, named.label_names) == (detected.ids, detected.texts, detected.label_names)


def test_the_data_module_refuses_a_missing_named_column_before_training(tmp_path, tiny_encoder, cache_dir):
    train = write_table(tmp_path / "train.csv", HEADER, ROWS)
    data = EmotionDataModule(train_file=str(train), val_file=str(train), text_column="text", tokenizer=tiny_encoder, cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"train.csv, line 1: there is no text column 'text'"):
        data.label_names  # noqa: B018 - the first read of the training split
    data = EmotionDataModule(train_file=str(train), val_file=str(train), id_column="id", tokenizer=tiny_encoder, cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"there is no ID column 'id'"):
        data.label_names  # noqa: B018
    # unset, both are detected; the run records null (detect) and not a name that the file lacks
    data = EmotionDataModule(train_file=str(train), val_file=str(train), tokenizer=tiny_encoder, cache_dir=cache_dir)
    assert data.label_names == ["angry", "happy"] and data.hparams.text_column is None and data.hparams.id_column is None


def test_a_named_labels_column_that_is_not_there_is_an_error(tmp_path):
    path = write_table(tmp_path / "train.jsonl", ["id", "text", "emotions"], [["1", "so happy", ["joy"]]])
    with pytest.raises(DataError, match=r"train.jsonl, line 1: there is no label list column 'labels' \(option `data.labels_column`\).*'emotions'"):
        read_table(str(path), labels_column="labels", label_names=["joy", "anger"])


def test_a_json_row_without_its_id_is_an_error_not_a_row_number(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "7", "text": "a", "joy": 1}\n{"text": "b", "joy": 0}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl, line 2: this object has no ID \('id'\)"):
        read_table(str(path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_predict_file_keeps_its_empty_texts_and_a_training_file_refuses_them(tmp_path, fmt):
    rows = [["m1", "so happy"], ["m2", ""], ["m3", "   "], ["m4", "meh"]]
    path = write_table(tmp_path / f"new.{fmt}", ["msg_id", "message"], rows)
    assert list(file_records(str(path), None, None, None)) == [("m1", "so happy", None), ("m2", "", None), ("m3", "   ", None), ("m4", "meh", None)]
    labelled = write_table(tmp_path / f"train.{fmt}", HEADER, [[*row, 0, 1] for row in rows])
    with pytest.raises(DataError, match=rf"train.{fmt}, (line|row) [123]: the text is empty"):
        read_table(str(labelled))  # the row of m2 (line 1 of a .json array written on one line)


def test_a_headerless_txt_is_written_with_id_and_text_columns(tmp_path):
    plain = tmp_path / "texts.txt"
    plain.write_text("so happy\n\nso cross\n", encoding="utf-8")
    assert output_columns(str(plain), None, None) == ("id", "text")
    assert output_columns(str(plain), "message", "msg_id") == ("id", "text")  # a file of lines names no columns to look for
    official = write_table(tmp_path / "2018-E-c-En-test.txt", ["ID", "Tweet", "joy"], [["2018-En-1", "hi", "NONE"]])
    assert output_columns(str(official), None, None) == ("ID", "Tweet")
    own = write_table(tmp_path / "new.csv", ["msg_id", "message"], [["m1", "hi"]])
    assert output_columns(str(own), None, None) == ("msg_id", "message")
    assert output_columns(str(write_table(tmp_path / "no-id.csv", ["message"], [["hi"]])), None, None) == ("id", "message")
