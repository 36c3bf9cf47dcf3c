"""A whole sweep: check the search against the config, open (or join) the study, run the workers, write the report."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError
from lorakit.sweep.space import SearchSpace
from lorakit.sweep.study import open_study, redact
from lorakit.sweep.worker import SweepPlan, Workers, counted_trials, recover_interrupted


def sweep_metric(cfg: Any) -> str:
    """What the trials are compared on: training.metric (auto: accuracy for classification, else the eval loss)."""
    from lorakit.train.tasks import TASKS

    metric = cfg.training.metric
    if metric != "auto":
        return metric
    task = TASKS.get(cfg.model.task)
    return "accuracy" if task is not None and task.classification else "loss"


def check_space(items: list[str], space: SearchSpace) -> tuple[Any, dict[str, Any]]:
    """Every value the search can draw makes a valid config (checked before any trial runs). Returns the base
    config and its dict."""
    from lorakit.cli.train import load_train_config

    cfg = load_train_config(items)
    base = cfg.to_dict()
    for param in space.params:
        values = param.grid_values() or [param.low, param.high]
        for value in values:
            overrides = space.overrides({param.key: value}, base)
            try:
                load_train_config(items + overrides)
            except ConfigError as exc:
                raise ConfigError(f"{space.source}: {param.key} = {value!r} does not make a valid config: {exc}") \
                    from None
    return cfg, base


def check_first_trial(items: list[str], space: SearchSpace, base: dict[str, Any], sweep_dir: Path) -> None:
    """The start-up checks of a trial (data, model, targets), once, writing nothing: a config every trial would
    fail on is one line now, not N failed trials."""
    from lorakit.cli.train import load_train_config
    from lorakit.train.run import check_start

    first = {p.key: (p.grid_values() or [p.low])[0] for p in space.params}
    probe_dir = sweep_dir / "trials" / ".check"  # never created: check_start writes nothing
    check_start(load_train_config(items + space.overrides(first, base) + [f"output.dir={probe_dir}"]))


def run_sweep(plan: SweepPlan, metric: str, record: dict[str, Any], say: Callable[[str], None] = print) -> Any:
    """Run the plan's workers until the study has plan.trials trials; returns the study. The report is written
    also when the sweep is interrupted (then the exception goes on)."""
    from lorakit.sweep.report import write_report

    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(plan.spec, plan.space, metric, record)
    recovered = recover_interrupted(study)
    done = counted_trials(study)
    say(f"study {plan.spec.name!r} in {redact(plan.spec.storage)}: {done} trial(s) on record"
        + (f", {recovered} interrupted one(s) queued again" if recovered else "")
        + f"; running up to {max(plan.trials - done, 0)} more with {plan.workers} worker(s) x "
          f"{plan.threads} thread(s); {plan.spec.sampler} sampler, {plan.spec.pruner} pruner, comparing "
          f"eval {metric}")
    lock = threading.Lock()
    started = time.perf_counter()

    def stamped(line: str) -> None:
        with lock:
            say(f"[{time.perf_counter() - started:7.0f}s] {line}")

    try:
        Workers(plan, study, stamped).run()
    finally:
        write_report(study, plan.sweep_dir)
    return study
