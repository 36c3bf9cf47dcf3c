"""The side-by-side table: one right-aligned column per method, each measure formatted for reading."""

from __future__ import annotations

import dataclasses

import pytest

from lorakit.demo.table import format_table, percent
from tests.demo.results_helpers import FULL, LORA, PROBE


@pytest.mark.parametrize(("value", "shown"), [
    (100.0, "100%"), (99.96, "100%"), (12.345, "12.3%"), (3.27, "3.3%"), (0.327, "0.33%"), (0.00339, "0.0034%"),
    (0.00001, "1.0e-05%"),
])
def test_percent_keeps_the_digits_that_matter(value, shown):
    assert percent(value) == shown


def cells(table: str, row: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.strip().startswith(row))
    return [cell.strip() for cell in line.strip()[len(row):].split("   ") if cell.strip()]


def test_each_measure_is_a_row_and_each_method_a_column():
    table = format_table([PROBE, LORA, FULL])
    assert table.splitlines()[0].split() == ["probe", "LoRA", "full", "FT"]
    assert cells(table, "test accuracy") == ["0.765", "0.801", "0.812"]
    assert cells(table, "validation accuracy") == ["0.771", "0.800", "0.815"]
    assert cells(table, "trainable parameters") == ["770 (0.0034%)", "74,498 (0.33%)", "22,713,986 (100%)"]
    assert cells(table, "saved size") == ["3.3 KiB", "296.0 KiB", "86.7 MiB"]
    assert cells(table, "training time") == ["41.2s (200 steps)", "1m35.0s (200 steps)", "2m30.5s (200 steps)"]
    assert cells(table, "peak memory (RSS)") == ["612 MiB", "820 MiB", "1,612 MiB"]


def test_columns_are_right_aligned():
    lines = format_table([PROBE, LORA, FULL]).splitlines()
    assert len({len(line) for line in lines}) == 1  # every row ends where the last column ends
    assert lines[0].endswith("full FT") and lines[1].endswith("0.812")


def test_a_missing_accuracy_shows_a_dash():
    table = format_table([dataclasses.replace(PROBE, test_accuracy=None)])
    assert cells(table, "test accuracy") == ["-"]
