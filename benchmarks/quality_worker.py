"""One training run of benchmarks/quality.py, in a fresh interpreter so that its peak memory is its own:

    python -m benchmarks.quality_worker '{"overrides": [...], "base": "demo" | null, "general_file": null | PATH}'

prints one JSON object as its last line: the trainer's summary (accuracy / loss, trainable %, saved bytes,
steps), seconds per optimizer step (from the step ends, so the evaluations are left out), and memory: the process
peak and the training memory (peak resident size during train() above the size with the model loaded).
With general_file, the same trainer evaluation (Trainer.evaluate) also gives the loss on that text before
training and after: the forgetting measure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Any

from torch import nn

from benchmarks.harness import PeakMemory
from lorakit.demo.worker import demo_config
from lorakit.hf.quiet import quiet_transformers
from lorakit.train.config import load_config
from lorakit.train.data import build_datasets
from lorakit.train.hooks import TrainHook
from lorakit.train.trainer import Trainer


class StepClock(TrainHook):
    """The time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.ends.append(time.perf_counter())


def general_examples(trainer: Trainer, path: str) -> list[dict]:
    """The text file encoded as the trainer encodes its own data (format text, the run's max_seq_len)."""
    cfg = dataclasses.replace(trainer.cfg.data, train_file=path, validation_file=None, validation_split=0.0,
                              test_file=None, format="text", packing=False)
    examples, _, _ = build_datasets(cfg, trainer.tokenizer)
    return [trainer.task.prepare(e) for e in examples]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    quiet_transformers()
    logging.getLogger("lorakit.train.data").setLevel(logging.ERROR)
    overrides = list(spec["overrides"])
    cfg = demo_config(overrides) if spec.get("base") == "demo" else load_config(None, overrides)
    clock = StepClock()
    started = time.perf_counter()
    trainer = Trainer(cfg, hooks=[clock])
    out: dict[str, Any] = {"load_s": time.perf_counter() - started}
    general = general_examples(trainer, spec["general_file"]) if spec.get("general_file") else []
    if general:
        out["general_before"] = trainer.evaluate(general)
        out["chat_before"] = trainer.evaluate()  # the held-out rows of the training task, before training
    memory = PeakMemory()  # from here on: what training adds to the loaded model
    result = trainer.train()
    out["train_mb"] = memory.peak_mb() - memory.start_mb
    out["peak_resettable"] = memory.resettable
    if general:
        out["general_after"] = trainer.evaluate(general)
    summary = {k: v for k, v in result.summary.items() if k != "data"}
    steps = clock.ends
    # the first step's end starts the clock: it leaves out the evaluations and the first step's warm-up
    out["step_s"] = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else None
    out["steps_per_epoch"] = trainer.steps_per_epoch
    out["summary"] = summary
    return out


def main(argv: list[str]) -> int:
    print(json.dumps(run(json.loads(argv[0])), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
