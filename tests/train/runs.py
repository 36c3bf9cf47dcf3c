"""Tiny training runs for the trainer / CLI tests: a random model and a small dataset in tmp_path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from lorakit.hf.tiny import make_tiny_model
from lorakit.train.config import TrainConfig, load_config

KINDS = {  # kind -> (tiny architecture, task, LoRA targets)
    "causal": ("llama", "causal-lm", ["q_proj", "v_proj"]),
    "seq2seq": ("t5", "seq2seq", ["q", "v"]),
    "cls": ("bert", "seq-cls", ["query", "value"]),
}
COLORS = ["red", "green", "blue", "black", "white", "yellow"]
ANIMALS = ["cat", "dog", "bird", "fish", "cow", "fox"]


def alpaca_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """'what color is the <animal>' -> a color that is a fixed function of the animal (learnable)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        i = rng.randrange(len(ANIMALS))
        rows.append({"instruction": f"what color is the {ANIMALS[i]} ?", "input": "", "output": COLORS[i]})
    return rows


def classification_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """The label is whether the sentence mentions a cat or a dog, among distractor words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["cat", "dog"])
        words = [rng.choice(COLORS) for _ in range(3)] + [label] + [rng.choice(["fish", "bird"])]
        rng.shuffle(words)
        rows.append({"text": "the " + " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_run(tmp: Path, kind: str = "causal", **sections) -> Path:
    """Write a tiny model, data and a config YAML under tmp; returns the config path.

    kind: "causal" (tiny llama, alpaca data), "seq2seq" (tiny t5, alpaca data) or "cls" (tiny bert, text/label
    data). `sections` update the
    config's sections (or add one, e.g. delta_lora={}), e.g. training={"max_steps": 4}."""
    from lorakit.train.data_formats import ALPACA_PROMPT

    words = [" ".join(COLORS + ANIMALS + ["what", "color", "is", "the"]), ALPACA_PROMPT]
    arch, task, targets = KINDS[kind]
    model_dir = tmp / f"tiny-{arch}"
    if not model_dir.exists():
        make_tiny_model(model_dir, arch, words)
    rows = classification_rows() if kind == "cls" else alpaca_rows()
    train = write_jsonl(tmp / f"{kind}-train.jsonl", rows[:32])
    val = write_jsonl(tmp / f"{kind}-val.jsonl", rows[32:])
    config = {
        "model": {"path": str(model_dir), "task": task},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": targets},
        "data": {"train_file": str(train), "validation_file": str(val),
                 "format": "classification" if kind == "cls" else "alpaca", "max_seq_len": 96},
        "training": {"max_steps": 6, "batch_size": 4, "lr": 1e-2, "progress": False, "num_threads": 1,
                     "scheduler": "constant"},
        "output": {"dir": str(tmp / "out"), "plot": False, "tensorboard": "false"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = tmp / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def config_of(path: Path, *overrides: str) -> TrainConfig:
    return load_config(path, list(overrides))
