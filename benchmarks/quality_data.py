"""The data files benchmarks/quality.py trains and evaluates on, written into a work folder at run time.

- Rotten Tomatoes slices (lorakit.corpora, split by movie): the whole train split, the first N rows of
  validation and test (smaller evaluations when time is short; the slice sizes go into QUALITY.md).
- A chat instruction set built from the same reviews for SmolLM2: the user asks for a verdict, the assistant
  answers in one fixed form ("Verdict: fresh"). Train rows come from the train split, held-out rows from
  validation (other movies).
- General English text for the forgetting measure: the docstrings of Python standard-library modules, read
  from this interpreter at run time. Nothing in it is about films or reviews.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

from lorakit.corpora.rotten_tomatoes import rotten_tomatoes_splits

PROMPT = ("Is this movie review fresh (positive) or rotten (negative)? Answer with 'Verdict: fresh' or "
          "'Verdict: rotten'.\n\nReview: {text}")
ANSWER = "Verdict: {label}"

# Modules with long prose docstrings; any that is missing on this Python is skipped.
GENERAL_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "fractions", "functools", "heapq", "http.client", "inspect", "itertools",
    "json", "logging", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics", "string",
    "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.request", "zipfile",
)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def review_files(work: Path, val_rows: int | None, test_rows: int | None) -> dict[str, Path]:
    """train (whole split), validation and test (their first rows) as JSONL files {"text", "label"}."""
    splits = rotten_tomatoes_splits()
    out = {"train": splits["train"]}
    for name, limit in (("validation", val_rows), ("test", test_rows)):
        rows = [{"text": r["text"], "label": r["label"]} for r in read_jsonl(splits[name], limit)]
        out[name] = write_jsonl(work / f"rt_{name}.jsonl", rows)
    return out


def chat_row(review: dict) -> dict:
    return {"messages": [{"role": "user", "content": PROMPT.format(text=review["text"])},
                         {"role": "assistant", "content": ANSWER.format(label=review["label"])}]}


def chat_files(work: Path, train_rows: int, val_rows: int) -> dict[str, Path]:
    """The SmolLM2 instruction set: chat rows from the train split, held-out rows from validation."""
    splits = rotten_tomatoes_splits()
    train = [chat_row(r) for r in read_jsonl(splits["train"], train_rows)]
    held_out = [chat_row(r) for r in read_jsonl(splits["validation"], val_rows)]
    return {"train": write_jsonl(work / "chat_train.jsonl", train),
            "validation": write_jsonl(work / "chat_validation.jsonl", held_out)}


def general_paragraphs() -> list[str]:
    """Prose paragraphs (several sentences, no code or tables) from the modules' and their members' docstrings."""
    out: list[str] = []
    for name in GENERAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(obj) or "" for _, obj in sorted(vars(module).items())
                 if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == name]
        for doc in docs:
            for para in doc.split("\n\n"):
                text = " ".join(para.split())
                if len(text) >= 200 and text.count(". ") >= 2 and not _looks_like_code(para):
                    out.append(text)
    return list(dict.fromkeys(out))  # the same paragraph can be inherited by several classes


def _looks_like_code(para: str) -> bool:
    return any(mark in para for mark in (">>>", "::", "    ", "{", "=>", "--")) or para.count("(") > 4


def general_file(work: Path, rows: int) -> tuple[Path, int]:
    """The first `rows` paragraphs as text rows; (the file, how many it holds)."""
    paragraphs = general_paragraphs()[:rows]
    return write_jsonl(work / "general_text.jsonl", [{"text": p} for p in paragraphs]), len(paragraphs)
