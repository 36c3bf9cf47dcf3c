"""One method of the demo, trained in a process of its own (spawned: a fresh interpreter), so that the peak memory
its summary reports is its own and not the sum of what earlier runs left behind in one process."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from lorakit.demo.settings import DEMO_YAML
from lorakit.errors import LorakitError
from lorakit.hf.quiet import quiet_transformers
from lorakit.train.config import TrainConfig, load_config
from lorakit.train.metrics import read_metrics
from lorakit.train.run import train


def demo_config(overrides: Sequence[str] = ()) -> TrainConfig:
    """The demo config (src/lorakit/data/demo.yaml) with `overrides` applied in order."""
    return load_config(None, list(overrides), base=DEMO_YAML)


def train_method(overrides: list[str]) -> dict[str, Any]:
    """Train the demo config with `overrides` (in the worker process): its summary and its train losses. What the
    run prints (its start-up summary, eval lines) goes to <output.dir>.log."""
    quiet_transformers()
    logging.getLogger("lorakit.train.data").setLevel(logging.ERROR)  # truncation counts: the demo says it once
    cfg = demo_config(overrides)
    # the run's own start-up summary and eval lines go to <output.dir>.log; the demo prints one line per run
    log_file = Path(cfg.output.dir).with_suffix(".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
        result = train(cfg)
    records = read_metrics(result.output_dir / "metrics.jsonl")
    return {"summary": result.summary, "train_losses": [r["loss"] for r in records if r["kind"] == "train"]}


def train_in_own_process(method: str, overrides: list[str]) -> tuple[dict[str, Any], float]:
    """train_method in a fresh process; (what it returned, wall seconds from spawn to exit)."""
    started = time.perf_counter()
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            out = pool.submit(train_method, overrides).result()
    except BrokenProcessPool:
        raise LorakitError(f"the {method} run's process ended without a result (killed, perhaps for memory); "
                           f"run it alone to see why: lorakit train configs/demo.yaml {' '.join(overrides)}") from None
    return out, time.perf_counter() - started
