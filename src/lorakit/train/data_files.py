"""Read local data files into rows that remember where they came from.

    read_rows("data/train.jsonl", BadRows(skip=False)) -> [Row(where="data/train.jsonl:1", fields={...}), ...]

Supported: JSON (a list of objects, or {"data": [...]}), JSONL, CSV / TSV (a header row, every value a string)
and Parquet (needs pyarrow). Every problem is a DataError whose message starts with the place it was found,
`path:line: reason`, so the CLI can print it as one line. A bad row (malformed JSON line, not an object) is
handed to BadRows, which raises or, with skip_bad_rows, counts it and moves on; a problem with the whole file
(missing, empty, unreadable) always raises.
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet", ".pq": "parquet"}


class DataError(LorakitError):
    """A data file or one of its rows is unusable; the message starts with `path:line:`."""


@dataclass
class Row:
    where: str  # "path:line" (JSONL, CSV), "path:line (item N)" (JSON), "path:row N" (Parquet)
    fields: dict[str, Any]  # the row's columns as read


@dataclass
class BadRows:
    """What to do with a bad row: raise its DataError, or (skip=True) count it and go on."""

    skip: bool = False
    count: int = 0
    messages: list[str] = field(default_factory=list)  # the first few, for the warning

    def handle(self, error: DataError) -> None:
        if not self.skip:
            raise error
        self.count += 1
        if len(self.messages) < 5:
            self.messages.append(str(error))


def read_rows(path: str | Path, bad: BadRows) -> list[Row]:
    """All rows of a local data file; the reader is chosen by the file's suffix."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
                        f"expected one of {sorted(SUFFIXES)}")
    if not path.is_file():
        hint = "it is a directory" if path.is_dir() else "no such file"
        raise DataError(f"{path}: data file not found ({hint}); check data.train_file / data.validation_file")
    rows = READERS[kind](path, bad)
    if not rows and not bad.count:
        raise DataError(f"{path}: the file holds no rows")
    return rows


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


def _as_row(value: Any, where: str, bad: BadRows) -> Row | None:
    if isinstance(value, dict):
        return Row(where, value)
    bad.handle(DataError(f"{where}: expected a JSON object with named fields, got {type(value).__name__} "
                         f"{preview(value)}"))
    return None


def read_jsonl(path: Path, bad: BadRows) -> list[Row]:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.handle(DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})"))
            continue
        row = _as_row(value, where, bad)
        if row is not None:
            rows.append(row)
    return rows


def read_json(path: Path, bad: BadRows) -> list[Row]:
    """A JSON list of objects, or an object whose "data" field is that list. Each row's line is found by
    decoding the list item by item; the whole file must parse (a malformed file cannot be partly skipped)."""
    text = _read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "; one object per line is JSONL: name the file .jsonl" if exc.msg == "Extra data" else ""
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}){hint}") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        start = _value_start(text, "data")
    elif isinstance(value, list):
        start = _skip_space(text, 0)
    else:
        found = f"an object with keys {sorted(value)[:10]}" if isinstance(value, dict) else type(value).__name__
        raise DataError(f'{path}:1: expected a JSON list of rows or {{"data": [...]}}, found {found}')
    line_starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]
    rows = []
    for index, (item, offset) in enumerate(_array_items(text, start), start=1):
        line = bisect.bisect_right(line_starts, offset)
        row = _as_row(item, f"{path}:{line} (item {index})", bad)
        if row is not None:
            rows.append(row)
    return rows


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _array_items(text: str, i: int) -> list[tuple[Any, int]]:
    """(item, offset) for each item of the JSON array starting at text[i] == '[' (text is valid JSON)."""
    decoder = json.JSONDecoder()
    items: list[tuple[Any, int]] = []
    i = _skip_space(text, i + 1)
    while text[i] != "]":
        item, end = decoder.raw_decode(text, i)
        items.append((item, i))
        i = _skip_space(text, end)
        if text[i] == ",":
            i = _skip_space(text, i + 1)
    return items


def _value_start(text: str, key: str) -> int:
    """Offset of the value of top-level `key` in a (valid) JSON object; the last one wins, as in json.loads."""
    decoder = json.JSONDecoder()
    i, found = _skip_space(text, _skip_space(text, 0) + 1), -1
    while text[i] != "}":
        name, i = decoder.raw_decode(text, i)
        i = _skip_space(text, _skip_space(text, i) + 1)  # past the ':'
        if name == key:
            found = i
        _, i = decoder.raw_decode(text, i)
        i = _skip_space(text, i)
        if text[i] == ",":
            i = _skip_space(text, i + 1)
    return found


def _read_delimited(path: Path, bad: BadRows, delimiter: str) -> list[Row]:
    lines = _read_text(path).splitlines(keepends=True)
    reader = csv.reader(lines, delimiter=delimiter)
    header = next(reader)
    names = [name.strip() for name in header]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates or not all(names):
        raise DataError(f"{path}:1: the header row {header} has {'repeated' if duplicates else 'empty'} "
                        f"column names{f' {duplicates}' if duplicates else ''}")
    rows, line = [], reader.line_num
    for values in reader:
        where, line = f"{path}:{line + 1}", reader.line_num  # a quoted value may span lines: report the first
        if not values or values == [""]:
            continue
        if len(values) > len(names):
            bad.handle(DataError(f"{where}: {len(values)} values but the header names {len(names)} columns "
                                 f"{names}; quote values that contain {delimiter!r}"))
            continue
        rows.append(Row(where, dict(zip(names, values, strict=False))))  # a short row: its last fields missing
    if not rows and not bad.count:
        raise DataError(f"{path}: the file has a header row but no data rows")
    return rows


def read_csv(path: Path, bad: BadRows) -> list[Row]:
    return _read_delimited(path, bad, ",")


def read_tsv(path: Path, bad: BadRows) -> list[Row]:
    return _read_delimited(path, bad, "\t")


def read_parquet(path: Path, bad: BadRows) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow "
                        "(or convert the file to JSONL / CSV)") from None
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    if not records:
        raise DataError(f"{path}: the file is empty (0 rows)")
    return [Row(f"{path}:row {i}", record) for i, record in enumerate(records, start=1)]


READERS: dict[str, Callable[[Path, BadRows], list[Row]]] = {
    "json": read_json, "jsonl": read_jsonl, "csv": read_csv, "tsv": read_tsv, "parquet": read_parquet,
}


def preview(value: Any, limit: int = 40) -> str:
    """A short JSON rendering of a bad value for error messages, in parentheses: (42), ("abc...")."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"({text})" if len(text) <= limit else f"({text[: limit - 3]}...)"
