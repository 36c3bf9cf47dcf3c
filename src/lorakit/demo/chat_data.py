"""The instruction set of `lorakit demo chat`, built at run time from the Rotten Tomatoes splits (lorakit.corpora).

Each row is one chat turn: the user asks for a verdict on a review snippet, the assistant answers in a fixed,
checkable format (`Verdict: fresh` or `Verdict: rotten`, then a short reason). The base model is told the format
too, so the comparison measures what training adds, not whether the format was ever asked for.

    train        chat rows from the train split (the trainer's data.train_file)
    validation   chat rows from the validation split (data.validation_file)
    test         held-out prompts from the test split, with the expected verdict ({"prompt", "label", "movie"})

The splits are by movie (lorakit.corpora.rotten_tomatoes), so no film is in two of them. Rows are drawn with a
seeded shuffle, half fresh and half rotten, from snippets short enough to keep training steps cheap.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from lorakit.corpora.rotten_tomatoes import LABELS
from lorakit.errors import ConfigError
from lorakit.io.atomic import atomic_directory

QUESTION = "Fresh or rotten? Answer 'Verdict: fresh' or 'Verdict: rotten', then a short reason.\nReview: {text}"
REASONS = {"fresh": "the critic recommends the film.", "rotten": "the critic does not recommend the film."}
VERDICT = re.compile(r"^\s*Verdict:\s*(fresh|rotten)\b", re.IGNORECASE)
MAX_CHARS = 100  # longest snippet used (44% of reviews fit); short rows keep a CPU training step cheap


@dataclass(frozen=True)
class ChatSizes:
    train: int = 256  # chat rows to train on (the step budget sees max_steps * batch_size of them)
    validation: int = 8  # scored for validation loss at the end of training
    test: int = 16  # held-out prompts scored base vs LoRA

    def __post_init__(self) -> None:
        for name in ("train", "validation", "test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"chat demo {name} size {value!r}: expected an integer >= 2")


def question(text: str) -> str:
    return QUESTION.format(text=text)


def answer(label: str) -> str:
    """The assistant's answer for a review labelled `label`: the verdict line the demo scores, and its reason."""
    return f"Verdict: {label} - {REASONS[label]}"


def verdict_of(reply: str) -> str | None:
    """fresh / rotten when `reply` opens in the trained format, else None."""
    match = VERDICT.match(reply)
    return match.group(1).lower() if match else None


def read_split(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def pick(rows: list[dict], count: int, seed: int) -> list[dict]:
    """`count` short reviews, alternating fresh / rotten after a seeded shuffle (balanced, reproducible)."""
    by_label: dict[str, list[dict]] = {label: [] for label in LABELS}
    for row in rows:
        if len(row["text"]) <= MAX_CHARS and row["label"] in by_label:
            by_label[row["label"]].append(row)
    rng = random.Random(seed)
    for group in by_label.values():
        rng.shuffle(group)
    half = count // 2
    if any(len(group) < count - half for group in by_label.values()):
        raise ConfigError(f"the Rotten Tomatoes split has too few short reviews for {count} rows; ask for fewer")
    per_label = count - half
    pairs = zip(by_label["fresh"][:per_label], by_label["rotten"][:per_label], strict=True)
    chosen = [row for pair in pairs for row in pair]
    return chosen[:count]


def chat_row(review: dict) -> dict:
    return {"messages": [{"role": "user", "content": question(review["text"])},
                         {"role": "assistant", "content": answer(review["label"])}],
            "movie": review["movie"]}


def test_row(review: dict) -> dict:
    return {"prompt": question(review["text"]), "label": review["label"], "movie": review["movie"]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def build_chat_data(splits: dict[str, Path], target: Path, sizes: ChatSizes = ChatSizes(),
                    seed: int = 0) -> dict[str, Path]:
    """Write train.jsonl, validation.jsonl (chat rows) and test.jsonl (prompts with labels) into the folder
    `target`, replacing it in one rename; {"train", "validation", "test"} -> path."""
    rows = {
        "train": [chat_row(r) for r in pick(read_split(splits["train"]), sizes.train, seed)],
        "validation": [chat_row(r) for r in pick(read_split(splits["validation"]), sizes.validation, seed)],
        "test": [test_row(r) for r in pick(read_split(splits["test"]), sizes.test, seed)],
    }
    target = Path(target)
    with atomic_directory(target) as tmp:
        for name, part in rows.items():
            write_jsonl(tmp / f"{name}.jsonl", part)
    return {name: target / f"{name}.jsonl" for name in rows}
