"""The raw formats of a table file, each parsed by a real parser on the file's own stream.

`read_rows(path)` gives a header and lazy (line, row) pairs, `row` a dict of column -> value, for
.csv (the stdlib `csv` module on the open file, so quoted cells may hold commas, quotes and line
breaks), .txt/.tsv (tab-separated without quoting, as the official E-c files and IANA's TSV: a
field holds no tab or line break; a quote is part of a tweet), .jsonl (one object per line),
.json (an array of objects, streamed by ijson, or JSON Lines) and .parquet. `line` is the physical line of the file
where the row starts (counting LF, CR and CRLF line ends, as editors do), or the row number in a
Parquet file. `plain_lines(path)` reads a file with one text per line. Nothing here changes a
text; tables.py does (and counts it).
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import ijson

from ..errors import DataError

BAD_BYTES = re.compile("[\udc80-\udcff]")  # what `surrogateescape` makes of bytes that are not UTF-8
MISSING = object()  # a JSON object without that key
Rows = Iterator[tuple[int, dict]]
csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))  # a 131,072-character text is no error


def clip(value, limit: int = 80) -> str:
    """`repr(value)`, cut to about `limit` characters: an error message stays a few lines whatever the input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def where(path: str, line: int) -> str:
    return f"{path}, {'row' if path.startswith('hub:') or Path(path).suffix.lower() == '.parquet' else 'line'} {line}"


def physical_lines(path: str) -> Iterator[str]:
    """The file's lines with their line ends (LF, CR or CRLF), decoded; a byte that is not UTF-8 stops with its line."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        for number, line in enumerate(f, start=1):
            if bad := BAD_BYTES.search(line):
                raw = line.encode("utf-8", "surrogateescape")
                at = len(line[: bad.start()].encode("utf-8", "surrogateescape"))
                raise DataError(
                    f"{path}, line {number}: bytes that are not UTF-8 ({raw[max(0, at - 10) : at + 10]!r}). Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)."
                )
            yield line


def plain_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its line end) for every line, blank ones included."""
    for number, line in enumerate(physical_lines(path), start=1):
        yield number, line.rstrip("\r\n")


def first_line(path: str) -> str:
    return next(plain_lines(path), (0, ""))[1]


def read_rows(path: str) -> tuple[list[str], Rows]:
    """(header, lazy (line, {column: value}) rows) of a csv/txt/tsv/jsonl/json/parquet file."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".txt", ".tsv"):
        return _delimited(path, suffix)
    if suffix == ".jsonl":
        return _json_header(path, _json_lines(path))
    if suffix == ".json":
        return _json_header(path, _json_file(path))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        batches = (batch.to_pylist() for batch in file.iter_batches(batch_size=4096))
        return file.schema_arrow.names, enumerate(itertools.chain.from_iterable(batches), start=1)
    raise DataError(f"{path}: unknown file type '{suffix}'. Use .txt/.tsv (tab-separated), .csv, .jsonl, .json or .parquet.")


def read_header(path: str) -> list[str]:
    return read_rows(path)[0]


def _delimited(path: str, suffix: str) -> tuple[list[str], Rows]:
    # csv: quoted cells may hold anything; tab-separated files are unquoted (a quote is part of a tweet)
    dialect = {"delimiter": ","} if suffix == ".csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    reader = csv.reader(physical_lines(path), **dialect)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path} is empty: it needs a header line and one row per text.")
    hint = (
        "An unquoted comma or an unbalanced double quote in a text splits or joins cells; quote such texts (pandas and the csv module do)."
        if suffix == ".csv"
        else "A tab or a line break inside a text splits it: tab-separated files have no quoting, so remove it from that text, or save the table as .csv or .jsonl."
    )

    def rows() -> Rows:
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader, None)
            except csv.Error as err:
                raise DataError(f"{path}, line {start}: {err}. {hint}") from None
            if fields is None:
                return
            if not fields:  # a blank line between rows
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}, line {start}: {len(fields)} fields where the header has {len(header)}. {hint}")
            yield start, dict(zip(header, fields))

    return header, rows()


def _json_lines(path: str) -> Rows:
    for number, line in enumerate(physical_lines(path), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}). Each line of a .jsonl file must be one JSON object.") from None
        yield number, _object(path, number, value)


def _object(path: str, line: int, value) -> dict:
    if not isinstance(value, dict):
        raise DataError(f'{path}, line {line}: {clip(value)} is not a JSON object. Each row must be an object such as {{"ID": ..., "Tweet": ..., "joy": 0}}.')
    return value


def _json_events(path: str, multiple_values: bool = False) -> Iterator[tuple[int, str, object, int]]:
    """(physical line, ijson event, value, depth) of the file's JSON, parsed by ijson a line at a time.

    Fed one physical line at a time, the parser emits each event while reading the line that holds
    it, so an event (and an error) knows its line without the file ever being held whole. `depth`
    is the nesting level the event happens at (0: the top-level value itself).
    """
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, use_float=True, multiple_values=multiple_values)
    number, depth = 0, 0
    try:
        for number, line in enumerate(physical_lines(path), start=1):
            parser.send(line.encode("utf-8", "surrogatepass"))
            for event, value in events:
                depth -= event in ("end_map", "end_array")
                yield number, event, value, depth
                depth += event in ("start_map", "start_array")
            del events[:]
        parser.close()
    except ijson.JSONError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "after array element" in reason:
            raise DataError(
                f"{path}, line {number}: expected ',' or ']' after an object of the array. Fix the JSON (e.g. load and re-save it with pandas)."
            ) from None
        if "integer overflow" in reason:  # valid JSON that the C parser refuses: say what to change
            raise DataError(f"{path}, line {number}: a whole number beyond 64 bits. Write such values (e.g. IDs) as strings.") from None
        raise DataError(
            f"{path}, line {max(number, 1)}: not valid JSON ({reason}). A .json file must hold an array of objects, or one object per line."
        ) from None
    for event, value in events:  # what only the end of the file completes
        yield number, event, value, depth


def _starts_an_array(path: str) -> bool:
    """Whether the file's first character other than whitespace is `[` (read up to that line only)."""
    return next((line.lstrip()[:1] == "[" for line in physical_lines(path) if line.strip()), False)


def _whole_table(path: str) -> bool:
    """Whether the file's first JSON value is one object whose values are all objects: pandas' default `to_json`, a table by columns."""
    found = False
    try:
        for _, event, _, depth in _json_events(path, multiple_values=True):
            if depth == 0:  # the first value's start or end
                if event not in ("start_map", "end_map"):
                    return False
                if event == "end_map":
                    return found
            elif depth == 1 and event not in ("map_key", "end_map", "end_array"):  # a value of the top-level object
                if event != "start_map":
                    return False
                found = True
    except DataError:
        return False
    return False


def _json_file(path: str) -> Rows:
    """An array of objects (`df.to_json(orient="records")`), or JSON Lines in a .json file; streamed, one row in memory at a time."""
    if not _starts_an_array(path):
        if _whole_table(path):
            raise DataError(
                f"{path}: one JSON object holding the whole table (pandas' default `to_json`), not one object per row. "
                "Write it with `df.to_json(path, orient='records')` (an array of objects) or `lines=True` (JSON Lines)."
            )
        yield from _json_lines(path)
        return
    builder, start = None, 0
    events = _json_events(path)
    for number, event, value, depth in events:
        if depth == 0:
            if event == "end_array":  # whatever follows the array is not read
                events.close()
                return
            continue
        if builder is None:  # an element of the array begins on this line
            builder, start = ijson.ObjectBuilder(), number
        builder.event(event, value)
        if depth == 1 and event not in ("start_map", "start_array", "map_key"):  # the element is complete
            yield start, _object(path, start, builder.value)
            builder = None


def _json_header(path: str, rows: Rows) -> tuple[list[str], Rows]:
    """Every key of every object, in order of first appearance: an object may omit its zero labels."""
    keys: dict[str, None] = {}
    empty = True
    for _, record in rows:
        keys.update(dict.fromkeys(record))
        empty = False
    if empty:
        raise DataError(f"{path} holds no JSON object: it needs one object per row.")
    header = list(keys)
    fresh = _json_lines(path) if Path(path).suffix.lower() == ".jsonl" else _json_file(path)
    return header, ((line, {k: record.get(k, MISSING) for k in header}) for line, record in fresh)
