"""Running a study's trials: K workers in this process (threads), each asking the study for a trial, training it in its
own process (sweep/trial.py) and telling the study how it ended. Another `lorakit sweep` on the same storage, on this
machine or another, adds workers to the same study (Optuna's own way to scale out).

A killed sweep resumes: trials that finished are kept; a trial left running by a dead sweep (its process gone on
this machine, or no heartbeat for GRACE_S from anywhere) is marked failed and its parameters are queued again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.sweep.space import SearchSpace
from lorakit.sweep.study import HEARTBEAT_S, StudySpec, requeue

SUMMARY_KEYS = ("trainable_params", "adapter_bytes", "time_s", "peak_rss_mb", "steps", "metric", "final_eval",
                "test_eval", "stopped_early")


@dataclass
class SweepPlan:
    items: list[str]  # the config file (or none: the demo's) and the user's overrides
    space: SearchSpace
    sweep_dir: Path
    spec: StudySpec
    trials: int
    workers: int = 1
    threads: int = 1  # torch threads per trial
    base: dict[str, Any] = field(default_factory=dict)  # the resolved base config (lora.r for an alpha ratio)


def counted_trials(study: Any) -> int:
    """Trials that count towards --trials: all but the interrupted ones whose parameters were queued again."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    return sum(t.number not in retried for t in trials)


def recover_interrupted(study: Any) -> int:
    """Fail and requeue the trials a dead sweep left running: on this machine, those whose process is gone; from
    anywhere, those without a heartbeat for the grace period. Returns how many."""
    import optuna
    from optuna.trial import TrialState

    host, count = socket.gethostname(), 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and attrs.get("pid") and not _alive(int(attrs["pid"])):
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
                continue  # another worker got there first
            requeue(study, trial)
            count += 1
    before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
        optuna.storages.fail_stale_trials(study)
    return count + len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - before


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workers:
    """The worker threads of one `lorakit sweep` process and the trial processes they run."""

    def __init__(self, plan: SweepPlan, study: Any, say: Any) -> None:
        self.plan, self.study, self.say = plan, study, say
        self.stop = threading.Event()
        self.lock = threading.Lock()  # count + ask as one step, so this process's workers do not overshoot
        self.children: dict[int, subprocess.Popen] = {}
        self.running = 0  # worker threads not yet done

    def run(self) -> None:
        self.running = self.plan.workers
        for i in range(self.plan.workers):
            threading.Thread(target=self._loop, name=f"sweep-worker-{i}", daemon=True).start()
        try:
            # polled, not Thread.join: a signal that interrupts join can leave the thread looking finished
            while self.running:
                time.sleep(0.2)
        except BaseException:  # Ctrl-C / SIGTERM: stop the trials, queue them again, then say so
            self.stop.set()
            for child in list(self.children.values()):
                child.terminate()
            deadline = time.monotonic() + 60
            while self.running and time.monotonic() < deadline:
                time.sleep(0.2)
            raise

    def _next_trial(self) -> Any | None:
        from optuna.trial import TrialState

        with self.lock:
            if self.stop.is_set():
                return None
            if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return self.study.ask()  # queued trials (enqueued, or interrupted ones queued again) always run
            if counted_trials(self.study) >= self.plan.trials:
                return None
            sampler = self.study.sampler
            if hasattr(sampler, "is_exhausted") and sampler.is_exhausted(self.study):
                return None  # every grid point is done or running
            return self.study.ask()

    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                trial = self._next_trial()
                if trial is None:
                    return
                self._run_trial(trial)
        finally:
            with self.lock:
                self.running -= 1

    def _run_trial(self, trial: Any) -> None:
        from optuna.trial import TrialState

        plan, number = self.plan, trial.number
        drawn = plan.space.suggest(trial)
        if self._same_as_finished(trial, drawn):
            return
        run_dir = plan.sweep_dir / "trials" / f"trial-{number:04d}"
        logs = plan.sweep_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        overrides = plan.space.overrides(drawn, plan.base)
        for key, value in {"run_dir": str(run_dir), "host": socket.gethostname(), "pid": os.getpid(),
                           "overrides": overrides}.items():
            trial.set_user_attr(key, value)
        shown = " ".join(f"{key}={_short(value)}" for key, value in drawn.items())
        self.say(f"trial {number}: started  {shown}")
        result_file = logs / f"trial-{number:04d}.result.json"
        result_file.unlink(missing_ok=True)
        started = time.perf_counter()
        rc = self._spawn(trial, plan.items + overrides + [f"output.dir={run_dir}",
                                                          f"training.num_threads={plan.threads}"],
                         result_file, logs / f"trial-{number:04d}.log")
        wall = time.perf_counter() - started
        trial.set_user_attr("wall_s", wall)
        outcome = json.loads(result_file.read_text()) if result_file.is_file() else None
        if outcome is None and self.stop.is_set():  # interrupted by Ctrl-C / SIGTERM: tried again on resume
            self.study.tell(trial, state=TrialState.FAIL)
            requeue(self.study, self.study.get_trials(deepcopy=False)[number])
            self.say(f"trial {number}: interrupted; its parameters are queued for the next run")
            return
        if outcome is None:
            outcome = {"state": "failed", "error": f"its process ended with exit code {rc} and no result "
                                                   f"(killed? out of memory?); see {logs / f'trial-{number:04d}.log'}"}
        summary = _summary(run_dir)
        if summary:
            trial.set_user_attr("summary", summary)
        self._tell(trial, outcome, wall)

    def _same_as_finished(self, trial: Any, drawn: dict[str, Any]) -> bool:
        """A trial drawing the values of a completed one is not trained again (runs are seeded: it would give the
        same result); it gets that trial's result. Samplers do repeat points of a discrete space."""
        from optuna.trial import TrialState

        for done in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if done.params == drawn and done.number != trial.number:
                for key, value in done.user_attrs.items():
                    if key not in ("host", "pid", "retry_of", "wall_s"):
                        trial.set_user_attr(key, value)
                trial.set_user_attr("same_as", done.number)
                trial.set_user_attr("wall_s", 0.0)
                self.study.tell(trial, done.value)
                self.say(f"trial {trial.number}: the same values as trial {done.number}: its result, "
                         f"{done.value:.4f}, without training again{self._best_note()}")
                return True
        return False

    def _spawn(self, trial: Any, items: list[str], result_file: Path, log_file: Path) -> int:
        threads = str(self.plan.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "lorakit.sweep.trial", str(result_file), self.plan.spec.to_json(),
                   str(trial._trial_id), *items]
        with open(log_file, "wb") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
            self.children[trial.number] = child
            try:
                while True:
                    try:
                        return child.wait(timeout=HEARTBEAT_S)
                    except subprocess.TimeoutExpired:
                        self.study._storage.record_heartbeat(trial._trial_id)  # alive, for other machines' workers
            finally:
                self.children.pop(trial.number, None)

    def _tell(self, trial: Any, outcome: dict[str, Any], wall: float) -> None:
        from optuna.trial import TrialState

        number, metric = trial.number, self.study.user_attrs.get("metric", "metric")
        state = outcome["state"]
        if state == "complete":
            self.study.tell(trial, float(outcome["value"]))
            line = f"{metric} {outcome['value']:.4f}"
        elif state == "pruned":
            trial.set_user_attr("pruned_at", outcome.get("pruned_at"))
            self.study.tell(trial, state=TrialState.PRUNED)
            line = f"pruned at step {outcome.get('pruned_at')}"
        else:
            trial.set_user_attr("error", outcome.get("error", "unknown error"))
            self.study.tell(trial, state=TrialState.FAIL)
            line = f"FAILED: {outcome.get('error')}"
        self.say(f"trial {number}: {line} in {wall:.0f}s{self._best_note()}")

    def _best_note(self) -> str:
        try:
            best = self.study.best_trial
        except ValueError:  # nothing complete yet
            return ""
        return f"  (best: trial {best.number}, {best.value:.4f}; {counted_trials(self.study)}/{self.plan.trials})"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {key: summary.get(key) for key in SUMMARY_KEYS}
