"""What a training run prints: the start-up summary, one line per evaluation, and, where the output is not a
terminal (CI, nohup, a pipe), plain progress lines instead of a carriage-return bar.

Pure functions returning strings (and one small class deciding when a progress line is due); the trainer prints.

Progress lines on a non-terminal come every `training.log_every` steps when that is above 1, else about every 5%
of the run (every ceil(total / 20) steps); and at least every 30 seconds when steps are slow, so a long step still
shows the run is alive. training.progress=false turns off both the bar and these lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

PROGRESS_PARTS = 20  # a non-terminal gets about this many progress lines per run
PROGRESS_SECONDS = 30.0  # and one at least this often when steps are slow


def human_duration(seconds: float) -> str:
    """4s, 1m02s, 2h05m: short, fixed-width enough to read in a log."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """{"section.key": value} of a config dict by section (a section that is off, None, is one entry)."""
    flat: dict[str, Any] = {}
    for section, values in config.items():
        if isinstance(values, Mapping):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    return flat


def non_default_settings(run: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """`section.key: value` for each setting of `run` that differs from `defaults` (both TrainConfig.to_dict())."""
    base = flatten(defaults)
    return [f"{key}: {_short_value(value)}" for key, value in flatten(run).items()
            if key not in base or base[key] != value]


def _short_value(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class StartInfo:
    """What the start-up summary shows; the trainer fills it in before step 1."""

    run_name: str
    stats: Mapping[str, Any]  # lorakit.train.data.DataStats (as a dict)
    test_examples: int
    total_steps: int
    steps_per_epoch: int
    global_batch: int
    trainable: int
    total: int
    tokens_per_step: float | None  # mean input tokens of a training example x global batch
    changed: list[str] = field(default_factory=list)  # non_default_settings(...)
    trackers: list[str] = field(default_factory=list)  # where the metrics go besides metrics.jsonl
    first_step: int = 0  # a resumed run starts past 0
    model: str = ""  # what was loaded: path or Hub id, dtype, task
    data: str = ""  # where the rows came from, their format, the tokenized-data cache


def startup_summary(info: StartInfo) -> str:
    """The lines printed before step 1: data, steps, batch, parameters, tokens, trackers, changed settings."""
    s = info.stats
    examples = f"{s.get('train_examples', 0):,} train, {s.get('validation_examples', 0):,} validation, " \
               f"{info.test_examples:,} test"
    if s.get("packed"):
        examples += " (packed blocks)"
    cut = f"{s.get('truncated', 0):,} cut to data.max_seq_len, {s.get('dropped', 0):,} dropped (no trained token left)"
    if s.get("bad_rows"):
        cut += f", {s['bad_rows']:,} bad rows skipped"
    steps = f"{info.total_steps:,} ({info.steps_per_epoch:,} per epoch)"
    if info.first_step:
        steps += f", resuming at step {info.first_step:,}"
    percent = 100 * info.trainable / max(info.total, 1)
    rows = [(name, value) for name, value in (("model", info.model), ("data", info.data)) if value]
    rows += [("examples", examples), *([("truncated", cut)] if "truncated" in s else []), ("steps", steps),
            ("global batch", f"{info.global_batch:,} examples"),
            ("trainable params", f"{info.trainable:,} of {info.total:,} ({percent:.3f}%)")]
    if info.tokens_per_step is not None:
        rows.append(("tokens per step", f"{info.tokens_per_step:,.0f} (mean example x global batch)"))
    rows += [("metrics", where) for where in ["metrics.jsonl", *info.trackers]]
    width = max(len(name) for name, _ in rows)
    lines, previous = [f"run {info.run_name}"], None
    for name, value in rows:  # a name repeated (metrics) is written once
        lines.append(f"  {'' if name == previous else name:<{width}}  {value}")
        previous = name
    if info.changed:
        lines.append("  settings changed from the defaults:")
        lines += [f"    {item}" for item in info.changed]
    return "\n".join(lines)


def eval_line(step: int, total: int, metrics: Mapping[str, Any], best: bool, label: str = "eval") -> str:
    """`eval step 40/200: loss 0.4123  accuracy 0.8010  f1 0.7950 (best)`; loss first, then the rest as given.
    label: "test" for the test set's one evaluation at the end."""
    keys = sorted(metrics, key=lambda k: k != "loss")
    parts = [f"{k} {_number(metrics[k])}" for k in keys]
    return f"{label} step {step}/{total}: " + "  ".join(parts) + (" (best)" if best else "")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def progress_line(step: int, total: int, loss: float, lr: float, steps_per_s: float) -> str:
    """`step 20/200  loss 0.6931  lr 1.9e-04  3.1 step/s  eta 1m02s`."""
    eta = (total - step) / steps_per_s if steps_per_s > 0 else float("inf")
    rate = f"{steps_per_s:.1f} step/s" if steps_per_s >= 0.1 else f"{1 / max(steps_per_s, 1e-9):.1f} s/step"
    eta_text = human_duration(eta) if math.isfinite(eta) else "-"
    return f"step {step}/{total}  loss {loss:.4f}  lr {lr:.1e}  {rate}  eta {eta_text}"


def line_interval(log_every: int, total: int) -> int:
    """Steps between progress lines: log_every when it is above 1, else about 5% of the run."""
    return log_every if log_every > 1 else max(1, math.ceil(total / PROGRESS_PARTS))


class ProgressLines:
    """Decides when a plain progress line is due and writes it (for output that is not a terminal)."""

    def __init__(self, total: int, every: int, first_step: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.every, self.first_step, self.clock = total, every, first_step, clock
        self.started = self.last = clock()
        self.last_step = first_step

    def update(self, step: int, loss: float, lr: float) -> str | None:
        """The line for `step` (just finished), or None when none is due yet: `every` steps after the last line,
        or PROGRESS_SECONDS after it (counting from the last line, so two lines never come a step apart)."""
        now = self.clock()
        due = step - self.last_step >= self.every or step == self.total or now - self.last >= PROGRESS_SECONDS
        if not due:
            return None
        self.last, self.last_step = now, step
        rate = (step - self.first_step) / max(now - self.started, 1e-9)
        return progress_line(step, self.total, loss, lr, rate)
