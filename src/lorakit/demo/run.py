"""`lorakit demo`: all-MiniLM-L6-v2 on Rotten Tomatoes, trained three ways through the same trainer, data, loss
and evaluation: a linear probe (only a new head, on the frozen model's features), LoRA, and full fine-tuning.

Each method is the demo config (src/lorakit/data/demo.yaml) plus the overrides its header lists for it
(demo/settings.py), then the user's overrides, which apply to all three. Every config is built, and so checked,
before the first run starts. Each run trains in a process of its own (demo/worker.py) and writes its folder
under output.dir (<dir>/probe, <dir>/lora, <dir>/full); then the table (demo/table.py) and, for a method that
scored below the probe, why and what to try (demo/hints.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lorakit.demo.hints import why_behind
from lorakit.demo.results import MethodResult
from lorakit.demo.settings import DEMO_DATA_NAME, DEMO_MODEL_NAME, demo_methods
from lorakit.demo.table import format_table
from lorakit.demo.worker import demo_config, train_in_own_process
from lorakit.errors import ConfigError
from lorakit.train.config import TrainConfig
from lorakit.train.prepare import resolve_config
from lorakit.train.report import human_time


def check_overrides(overrides: Sequence[str]) -> None:
    """The demo runs every method itself: a user's training.method would make the three runs one."""
    for item in overrides:
        if item.partition("=")[0].strip() == "training.method":
            raise ConfigError(f"lorakit demo runs every method ({', '.join(demo_methods())}); {item!r} would make "
                              "them all one. To train one method alone: lorakit train configs/demo.yaml "
                              "training.method=... (configs/demo.yaml lists each method's settings)")


def method_overrides(overrides: Sequence[str]) -> dict[str, list[str]]:
    """method -> everything applied to the demo config for it: its own settings, then the user's, then its
    output folder (<output.dir>/<method>)."""
    check_overrides(overrides)
    parent = Path(demo_config(overrides).output.dir)
    return {method: [*own, *overrides, f"output.dir={parent / method}"]
            for method, own in demo_methods().items()}


def describe_method(cfg: TrainConfig) -> str:
    method = cfg.training.method
    if method == "probe":
        return "a new linear head on the frozen model's features"
    if method == "full":
        return "every weight of the model, and the new head"
    lora = cfg.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else "/".join(lora.target_modules or [])
    return f"rank-{lora.r} adapters on {targets}, and the new head"


def describe_schedule(cfg: TrainConfig) -> str:
    t = cfg.training
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epoch{'s' if t.epochs > 1 else ''}"
    head = f", head lr {t.head_lr:g}" if t.head_lr is not None and cfg.training.method != "probe" else ""
    return f"lr {t.lr:g}{head}, {length} of batch {t.batch_size}"


def count_rows(path: str | None) -> int:
    """Rows of a JSONL file (0 for no file)."""
    if path is None:
        return 0
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def describe_data(cfg: TrainConfig, resolved: TrainConfig) -> tuple[str, int]:
    """A line saying what the runs train and score on, and the number of test rows."""
    d = resolved.data
    if cfg.data.train_file is not None:
        return f"data: {d.train_file} (validation: {d.validation_file or d.validation_split}; test: {d.test_file})", 0
    sizes = [count_rows(path) for path in (d.train_file, d.validation_file, d.test_file)]
    with open(d.test_file, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    movies, fresh = len({row["movie"] for row in rows}), sum(row["label"] == "fresh" for row in rows)
    return (f"data: {DEMO_DATA_NAME} review snippets, fresh or rotten, split by movie: {sizes[0]:,} train / "
            f"{sizes[1]:,} validation / {sizes[2]:,} test ({movies} movies no run trains on, "
            f"{fresh / max(len(rows), 1):.0%} fresh)"), sizes[2]


def run_demo(overrides: Sequence[str] = (), say: Callable[[str], None] = print) -> list[MethodResult]:
    """Train every method of the demo, each in its own process; print progress, the table and any hint."""
    started = time.perf_counter()
    runs = method_overrides(overrides)
    configs = {method: demo_config(extra) for method, extra in runs.items()}  # every config checked up front
    tuned = {method: demo_config(own) for method, own in demo_methods().items()}  # the demo's own settings
    first = next(iter(configs.values()))
    resolved = resolve_config(first)  # builds the data splits once, finds the model: errors before any run
    model = DEMO_MODEL_NAME if first.model.path is None else resolved.model.path
    data_line, test_rows = describe_data(first, resolved)
    say(f"lorakit demo: {model}, trained {len(runs)} ways with the same trainer, data, loss and evaluation")
    say(f"  {data_line}")
    results: list[MethodResult] = []
    for i, (method, extra) in enumerate(runs.items(), 1):
        cfg = configs[method]
        say(f"lorakit demo [{i}/{len(runs)}] {method}: {describe_method(cfg)} ({describe_schedule(cfg)}) ...")
        out, wall = train_in_own_process(method, extra)
        result = MethodResult.from_run(method, out["summary"], out["train_losses"], wall, cfg.training.epochs,
                                       cfg.training.lr)
        results.append(result)
        say(f"lorakit demo [{i}/{len(runs)}] {method} done in {human_time(wall)}: validation accuracy "
            f"{_fmt(result.validation_accuracy)}, test accuracy {_fmt(result.test_accuracy)} "
            f"(log: {Path(cfg.output.dir).with_suffix('.log')})")
        if i == 1:
            stats = out["summary"]["data"]
            truncated, n = stats.get("truncated", 0), stats.get("train_rows", 0) + stats.get("validation_rows", 0)
            if truncated:
                say(f"  (data.max_seq_len={cfg.data.max_seq_len} tokens cut the end off {truncated:,} of the {n:,} "
                    "train and validation texts)")
    say(f"lorakit demo: results on the {test_rows:,} test reviews" if test_rows else "lorakit demo: results")
    say(format_table(results))
    probe = next((r for r in results if r.method == "probe"), None)
    for result in results:
        if probe is not None and result is not probe:
            own = tuned[result.method].training
            for line in why_behind(result, probe, own.lr, test_rows, configs[result.method].training.max_steps,
                                   own.max_steps):
                say(f"  {line}")
    say(f"  runs written to {Path(first.output.dir).parent}/{{{','.join(runs)}}}; total time "
        f"{human_time(time.perf_counter() - started)}")
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
