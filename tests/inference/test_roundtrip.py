"""Round trip: generated tables in every supported format, with hostile unicode texts, read back exactly.

For each format (csv, tab-separated E-c .txt, .jsonl, a .json array, plain text with one text per
line) hypothesis writes 200 tables (derandomized: the same tables on every run, see conftest.py)
whose texts mix emoji with ZWJ and skin tones, RTL and CJK scripts, quotes, commas, tabs, CR/LF/CRLF,
blank lines and 5,000-character texts, with a BOM, blank lines between rows and any line ends. The
predict reader must give exactly one row per input row, the same IDs in the same order and the same
text up to the documented replacement (each tab or line break -> one space); the training reader
the same rows and labels. A few such tables also go through the real `predict` on a tiny model.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emolightning.data.tables import file_records, read_table

from helpers import predict_args

LABELS = ["joy", "fear", "trust"]
PIECES = [
    "👩\u200d👩\u200d👧\u200d👦",
    "👍🏽",
    "🧑🏿\u200d🚀",
    "🏳️\u200d🌈",
    "مرحبا بالعالم",
    "שלום עולם",
    "\u200f",
    "\u202e",
    "你好，世界",
    "日本語のテキスト",
    "한국어",
    '"',
    "'",
    '""',
    '"quoted"',
    ",",
    ";",
    "\t",
    "\r",
    "\n",
    "\r\n",
    "\n\n",
    "\r\n\r\n",
    " ",
    "  ",
    "word",
    "NONE",
    "0",
    "1",
    "#tag",
    "@user",
    "\\",
    "\u2028",
    "\x85",
    "\x0b",
    "é",
    "e\u0301",
]
BREAKS = re.compile(r"\r\n|[\r\n\t]")
FORMATS = ["csv", "txt", "jsonl", "json", "plain"]
EXAMPLES = 200  # per format


def spaced(text: str) -> str:
    return BREAKS.sub(" ", text)


chars = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\ufeff"), min_size=1, max_size=6)
short_text = st.lists(st.one_of(st.sampled_from(PIECES), chars), min_size=1, max_size=10).map("".join)
long_text = st.tuples(st.sampled_from(PIECES), chars).map(lambda pair: ((pair[0] + pair[1] + " ") * 5000)[:5000])
any_text = st.one_of(short_text, short_text, short_text, long_text)
row_id = st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="\ufeff\x85"), min_size=1, max_size=12)


@st.composite
def tables(draw, fmt: str) -> dict:
    """{'fmt', 'content' (the file's text), 'ids', 'texts' (as the reader must give them), 'labels'}."""
    n = draw(st.integers(1, 8))
    texts = draw(st.lists(any_text, min_size=n, max_size=n))
    ends = st.just(draw(st.sampled_from(["\n", "\r\n", "\r"])))  # one line end per file: a CR then an LF would be one CRLF
    bom = "\ufeff" if draw(st.booleans()) else ""
    if fmt == "plain":  # every line a row: texts hold no line break, blank and whitespace-only lines are rows
        texts = [re.sub(r"\r\n|[\r\n]", " ", t) for t in texts]
        texts = [draw(st.sampled_from(["", "   ", t, t, t])) for t in texts]
        content = "".join(t + draw(ends) for t in texts[:-1]) + texts[-1] + (draw(ends) if not texts[-1] or draw(st.booleans()) else "")
        return {"fmt": fmt, "content": bom + content, "ids": [str(i) for i in range(1, n + 1)], "texts": [spaced(t) for t in texts], "labels": None}
    texts = [t if t.strip() else t + "x" for t in texts]  # an empty text in a table is an error, tested elsewhere
    ids = draw(st.lists(row_id, min_size=n, max_size=n, unique=True))
    labels = [[draw(st.integers(0, 1)) for _ in LABELS] for _ in range(n)]

    def blank() -> str:  # now and then a blank line between rows (not a row)
        return draw(ends) if draw(st.integers(0, 4)) == 0 else ""

    if fmt == "csv":
        out = io.StringIO()
        terminator, quoting = draw(st.sampled_from(["\r\n", "\n"])), draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
        if terminator == "\n" and any("\r" in t for t in texts):
            quoting = csv.QUOTE_ALL  # csv.writer quotes only the line terminator's own characters: a bare CR would end the row
        writer = csv.writer(out, lineterminator=terminator, quoting=quoting)
        writer.writerow(["ID", "Tweet", *LABELS])
        for i, t, lab in zip(ids, texts, labels):
            writer.writerow([i, t, *lab])
        content = out.getvalue()
    elif fmt == "txt":  # the official E-c layout: tab-separated, unquoted, so a text holds no tab or line break
        texts = [spaced(t) for t in texts]
        content = "ID\tTweet\t" + "\t".join(LABELS) + draw(ends)
        content += "".join(blank() + "\t".join([i, t, *map(str, lab)]) + draw(ends) for i, t, lab in zip(ids, texts, labels))
    else:
        objects = []
        for k, (i, t, lab) in enumerate(zip(ids, texts, labels)):
            values = {name: (bool(v) if draw(st.booleans()) else v) for name, v in zip(LABELS, lab)}
            if k and draw(st.booleans()):  # later objects may leave out their zero labels
                values = {name: v for name, v in values.items() if v}
            objects.append({"ID": i, "Tweet": t, **values})
        ascii_only = draw(st.booleans())
        if fmt == "jsonl":
            content = "".join(blank() + json.dumps(o, ensure_ascii=ascii_only) + draw(ends) for o in objects)
        else:
            content = json.dumps(objects, ensure_ascii=ascii_only, indent=draw(st.sampled_from([None, 1, 2])))
    return {"fmt": fmt, "content": bom + content, "ids": ids, "texts": [spaced(t) for t in texts], "labels": labels}


def write(table: dict, folder: Path) -> Path:
    path = folder / ("texts.txt" if table["fmt"] == "plain" else f"table.{table['fmt']}")
    path.write_bytes(table["content"].encode("utf-8"))  # bytes: no newline translation
    return path


def check_readers(table: dict, folder: Path) -> None:
    path = write(table, folder)
    rows = list(file_records(str(path), "Tweet", "ID", None))
    assert [r[0] for r in rows] == table["ids"]
    assert [r[1] for r in rows] == table["texts"]
    if table["labels"] is not None:
        read = read_table(str(path))
        assert read.ids == table["ids"] and read.texts == table["texts"]
        assert read.label_names == LABELS and read.labels.tolist() == table["labels"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_row_comes_back_exactly(fmt, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"roundtrip-{fmt}")
    count = []

    @settings(max_examples=EXAMPLES)
    @given(tables(fmt))
    def roundtrip(table):
        count.append(1)
        check_readers(table, folder)

    roundtrip()
    assert len(count) >= EXAMPLES


def sample_table(fmt: str) -> dict:
    """The longest of the first 20 tables of `fmt` (derandomized: the same on every run), for the real `predict`."""
    drawn = []

    @settings(max_examples=20)
    @given(tables(fmt))
    def draw(table):
        drawn.append(table)

    draw()
    return max(drawn, key=lambda t: (len(t["ids"]), len(t["content"])))


@pytest.mark.parametrize("fmt", ["csv", "plain", "json"])
def test_predict_writes_one_row_per_input_row(fmt, trained_run, tmp_path):
    from emolightning.cli.main import run_cli

    table = sample_table(fmt)
    source = write(table, tmp_path)
    check_readers(table, tmp_path)
    out = tmp_path / "pred.txt"
    run_cli(predict_args(trained_run, tmp_path, "--data.predict_file", str(source), "--output", str(out)))
    lines = out.read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == "" and lines[0].split("\t")[:2] == (["id", "text"] if fmt == "plain" else ["ID", "Tweet"])
    rows = [line.split("\t") for line in lines[1:-1]]
    assert [r[0] for r in rows] == table["ids"] and [r[1] for r in rows] == table["texts"]
    assert all(len(r) == 2 + 11 and set(r[2:]) <= {"0", "1"} for r in rows)
