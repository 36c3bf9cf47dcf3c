"""Reading JSON / JSONL / CSV / TSV / Parquet rows, with their locations, and the file-level errors."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from lorakit.train.data_files import BadRows, DataError, read_rows
from tests.train.data_helpers import write_csv, write_jsonl

ROWS = [{"text": "one", "label": "a"}, {"text": "two, with a comma", "label": "b"}]


def read(path, skip: bool = False):
    return read_rows(path, BadRows(skip=skip))


def test_jsonl_rows_carry_their_line_numbers(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    rows = read(path)
    assert [r.fields for r in rows] == ROWS
    assert [r.where for r in rows] == [f"{path}:1", f"{path}:3"]


def test_json_list_and_data_wrapper_give_the_same_rows_with_lines(tmp_path):
    listed, wrapped = tmp_path / "list.json", tmp_path / "wrapped.json"
    listed.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    wrapped.write_text(json.dumps({"version": 1, "data": ROWS}, indent=2), encoding="utf-8")
    for path in (listed, wrapped):
        rows = read(path)
        assert [r.fields for r in rows] == ROWS
        text_lines = path.read_text().splitlines()
        for index, row in enumerate(rows, start=1):
            line = int(row.where.split(":")[1].split()[0])
            assert text_lines[line - 1].strip() == "{", row.where  # the line where the object opens
            assert row.where.endswith(f"(item {index})")


def test_csv_and_tsv_rows_are_text_with_line_numbers(tmp_path):
    rows_csv = read(write_csv(tmp_path / "train.csv", ROWS))
    rows_tsv = read(write_csv(tmp_path / "train.tsv", ROWS, delimiter="\t"))
    for rows, name in ((rows_csv, "train.csv"), (rows_tsv, "train.tsv")):
        assert [r.fields for r in rows] == ROWS
        assert [r.where for r in rows] == [f"{tmp_path / name}:2", f"{tmp_path / name}:3"]


def test_csv_value_spanning_lines_reports_its_first_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"two\nlines",a\nthree,b\n', encoding="utf-8")
    rows = read(path)
    assert rows[0].fields == {"text": "two\nlines", "label": "a"}
    assert [r.where for r in rows] == [f"{path}:2", f"{path}:4"]


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = read(path)
    assert [r.fields for r in rows] == ROWS
    assert rows[1].where == f"{path}:row 2"


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="pip install pyarrow"):
        read(path)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("train.jsonl", "", "the file is empty"),
    ("train.jsonl", "\n  \n", "the file is empty"),
    ("train.csv", "text,label\n", "header row but no data rows"),
    ("train.json", "[]", "the file holds no rows"),
    ("train.json", '{"rows": []}', r'expected a JSON list of rows or \{"data": \[...\]\}'),
    ("train.txt", "hello", "unsupported file type '.txt'"),
])
def test_unusable_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read(path)
    assert str(info.value).startswith(str(path))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: data file not found"):
        read(tmp_path / "nope.jsonl")


def test_malformed_jsonl_line_names_its_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "broken", \n{"text": "ok"}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}:2: malformed JSON")


def test_malformed_json_file_names_its_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n  {"text": "ok"},\n  {"text": "no closing quote}\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}:3: malformed JSON")


def test_jsonl_row_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], ["a", "list"]])
    with pytest.raises(DataError, match=r"train\.jsonl:2: expected a JSON object with named fields, got list"):
        read(path)


def test_csv_row_with_too_many_values(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\none,a\ntwo,b,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:3: 3 values but the header names 2 columns"):
        read(path)


def test_skip_bad_rows_counts_them_and_keeps_the_rest(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\nnot json\n[1]\n{"text": "b"}\n', encoding="utf-8")
    bad = BadRows(skip=True)
    rows = read_rows(path, bad)
    assert [r.fields["text"] for r in rows] == ["a", "b"]
    assert bad.count == 2
    assert bad.messages[0].startswith(f"{path}:2: malformed JSON")
    assert bad.messages[1].startswith(f"{path}:3: expected a JSON object")
