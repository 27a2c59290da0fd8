"""The table reader on the files people keep emotion data in: every row read exactly, or one clear error.

Each case here was seen going wrong (issue 14): texts changed or rows dropped or shifted without a word,
or an error that named the wrong line or printed the whole file.
"""

from __future__ import annotations

import csv
import json
import logging

import pytest

from emolightning.data.tables import read_records, read_table
from emolightning.errors import DataError


def records(path, **kwargs) -> list:
    return list(read_records(str(path), **kwargs)[1])


def write_csv(path, rows: list[list], **kwargs) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, **kwargs).writerows(rows)


def test_csv_quoted_multiline_cells_keep_their_line_breaks_as_spaces(tmp_path, caplog):
    # what pandas and Excel write for a text with line breaks (CRLF inside a cell: Excel)
    path = tmp_path / "train.csv"
    write_csv(path, [["ID", "Tweet", "joy"], ["a", "first line\nsecond", 1], ["b", "one\r\ntwo\tthree", 0], ["c", 'say "hi", twice', 1]])
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.emolightning"):
        table = read_table(str(path))
    assert table.texts == ["first line second", "one two three", 'say "hi", twice']
    assert table.ids == ["a", "b", "c"] and table.labels.tolist() == [[1], [0], [1]]
    notes = [r.getMessage() for r in caplog.records if "tabs or line breaks" in r.getMessage()]
    assert len(notes) == 1 and "2 texts" in notes[0], notes


def test_csv_errors_name_the_physical_line_not_the_record(tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path, [["ID", "Tweet", "joy"], ["a", "one\ntwo\nthree", 1], ["b", "fine", 1], ["c", "bad label", 7]])
    with pytest.raises(DataError, match=r"train.csv, line 6: .*'joy' holds '7'"):
        read_table(str(path))


def test_plain_text_predict_file_keeps_every_line_as_a_row(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"first\n\n   \nfourth\twith a tab\r\nfifth\rsixth\n")
    rows = records(path, allow_plain_text=True)
    # IDs are the line numbers: the empty and the whitespace-only line are rows too, nothing shifts
    assert rows == [("1", "first", None), ("2", "", None), ("3", "   ", None), ("4", "fourth with a tab", None), ("5", "fifth", None), ("6", "sixth", None)]


def test_plain_text_whose_first_line_holds_a_tab_is_not_a_table(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("so\thappy\nsad today\n", encoding="utf-8")
    assert records(path, allow_plain_text=True) == [("1", "so happy", None), ("2", "sad today", None)]


def test_json_array_of_objects(tmp_path):
    path = tmp_path / "train.json"
    rows = [{"ID": f"r{i}", "Tweet": f"text {i}\nmore", "joy": i % 2, "fear": 1 - i % 2} for i in range(3)]
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")  # what df.to_json(orient="records") writes, pretty
    table = read_table(str(path))
    assert table.ids == ["r0", "r1", "r2"] and table.texts == ["text 0 more", "text 1 more", "text 2 more"]
    assert table.label_names == ["joy", "fear"] and table.labels.tolist() == [[0, 1], [1, 0], [0, 1]]


def test_a_bad_json_file_gives_a_short_error_whatever_its_size(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"Tweet": {str(i): "x" * 50 for i in range(2000)}, "joy": {str(i): 1 for i in range(2000)}}), encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_table(str(path))
    assert len(str(err.value)) < 600 and "orient" in str(err.value)


def test_jsonl_objects_that_omit_zero_labels(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [{"ID": 1, "Tweet": "no label at all"}, {"ID": 2, "Tweet": "so happy", "joy": 1}, {"ID": 3, "Tweet": "scared", "fear": 1, "joy": 0}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    table = read_table(str(path))
    assert table.label_names == ["joy", "fear"]  # from every object, in order of first appearance
    assert table.labels.tolist() == [[0, 0], [1, 0], [0, 1]]


def test_pandas_index_column_is_named_in_the_error(tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path, [["", "ID", "Tweet", "joy"], [0, "a", "so happy", 1], [1, "b", "sad", 0], [2, "c", "ok", 0]])  # df.to_csv() without index=False
    with pytest.raises(DataError, match=r"line 1: .*no name.*index=False.*data\.label_columns"):
        read_table(str(path))


def test_a_metadata_column_error_names_label_columns(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("ID\tTweet\tsource\tjoy\n1\tso happy\ttwitter\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: .*'source' holds 'twitter'.*data\.label_columns"):
        read_table(str(path))


def test_error_quotes_are_truncated(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("ID\tText" + "\tx" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_table(str(path))
    assert len(str(err.value)) < 700


def test_json_array_rows_know_their_physical_line(tmp_path):
    rows = [{"ID": "a", "Tweet": "one", "joy": 1}, {"ID": "b", "Tweet": "two", "joy": 0}, {"ID": "c", "Tweet": "three", "joy": 7}]
    path = tmp_path / "train.json"
    path.write_bytes(json.dumps(rows, indent=1).replace("\n", "\r\n").encode())  # 5 lines per object, CRLF line ends
    with pytest.raises(DataError, match=r"train.json, line 12: .*'joy' holds 7"):
        read_table(str(path))
    path.write_text('[{"ID": "a", "Tweet": "x"}\n\n {"ID": "b", "Tweet": "y"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"train.json, line 3: expected ',' or '\]' after an object of the array"):
        read_table(str(path))
    path.write_text('[\n{"ID": 12345678901234567890, "Tweet": "x", "joy": 1}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"train.json, line 2: a whole number beyond 64 bits.*as strings"):
        read_table(str(path))


def test_a_json_array_is_streamed_not_read_whole(tmp_path, monkeypatch):
    from emolightning.data import formats

    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"ID": str(i), "Tweet": f"text {i}", "joy": i % 2} for i in range(1000)], indent=1), encoding="utf-8")
    read = [0]
    lines = formats.physical_lines

    def counted(name):
        for line in lines(name):
            read[0] += 1
            yield line

    monkeypatch.setattr(formats, "physical_lines", counted)
    rows = formats._json_file(str(path))
    assert next(rows) == (2, {"ID": "0", "Tweet": "text 0", "joy": 0})
    assert read[0] < 20  # the first object's lines (and the first line, to see the array), not the file's ~5,000
    assert sum(1 for _ in rows) == 999
