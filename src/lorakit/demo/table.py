"""The demo's side-by-side table: one column per method, one row per measure. Pure formatting."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lorakit.demo.results import MethodResult
from lorakit.train.report import human_bytes, human_time


def percent(value: float) -> str:
    """A share of parameters with the digits that matter: 100%, 12.5%, 0.33%, 0.0034%."""
    if value >= 99.95:
        return "100%"
    if value >= 10:
        return f"{value:.1f}%"
    return f"{value:.2g}%" if value >= 1e-4 else f"{value:.1e}%"


def accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


ROWS: list[tuple[str, Callable[[MethodResult], str]]] = [
    ("test accuracy", lambda r: accuracy(r.test_accuracy)),
    ("validation accuracy", lambda r: accuracy(r.validation_accuracy)),
    ("trainable parameters", lambda r: f"{r.trainable_params:,} ({percent(r.trainable_percent)})"),
    ("saved size", lambda r: human_bytes(r.saved_bytes)),
    ("training time", lambda r: f"{human_time(r.train_s)} ({r.steps} steps)"),
    ("peak memory (RSS)", lambda r: f"{r.peak_rss_mb:,.0f} MiB"),
]


def format_table(results: Sequence[MethodResult]) -> str:
    """Rows of measures, a right-aligned column per method, headed by its title."""
    cells = [[r.title for r in results]] + [[show(r) for r in results] for _, show in ROWS]
    names = ["", *(name for name, _ in ROWS)]
    name_width = max(len(name) for name in names)
    widths = [max(len(row[i]) for row in cells) for i in range(len(results))]
    lines = []
    for name, row in zip(names, cells, strict=True):
        values = "   ".join(f"{cell:>{width}}" for cell, width in zip(row, widths, strict=True))
        lines.append(f"  {name:<{name_width}}   {values}".rstrip())
    return "\n".join(lines)
