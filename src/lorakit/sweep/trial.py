"""One sweep trial, in its own process: `lorakit train` with the trial's overrides, its evaluations reported to the
study, where the pruner may stop it (the run then ends as an early-stopped run does, adapter saved). Its own process
so that a crash, a memory blow-up or a thread setting stays in the trial, and its peak memory is its own.

    python -m lorakit.sweep.trial RESULT.json STUDY_SPEC_JSON TRIAL_ID CONFIG|KEY=VALUE ...

RESULT.json (written atomically): {"state": "complete" | "pruned" | "failed", "value", "pruned_at", "error"}.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError
from lorakit.io.atomic import replace_files
from lorakit.sweep.study import StudySpec
from lorakit.train.hooks import TrainHook


class PruningHook(TrainHook):
    """Reports each evaluation's metric to the Optuna trial and stops the run when the pruner says so."""

    def __init__(self, trial: Any, metric: str, pruner: str) -> None:
        self.trial, self.metric, self.pruner = trial, metric, pruner
        self.pruned_at: int | None = None
        self.last_value: float | None = None

    def on_eval(self, step: int, metrics: dict[str, float], last: bool) -> str | None:
        value = metrics.get(self.metric)
        if value is None:
            return None
        self.last_value = float(value)
        self.trial.report(self.last_value, step)
        if not last and self.trial.should_prune():  # at the last step there is nothing left to save
            self.pruned_at = step
            return f"pruned by the sweep's {self.pruner} pruner (eval {self.metric} {value:.4f})"
        return None


def run_trial(spec: StudySpec, trial_id: int, items: list[str]) -> dict[str, Any]:
    import optuna

    from lorakit.cli.train import load_train_config
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.sweep.study import load_study
    from lorakit.train.run import train

    quiet_transformers()
    study = load_study(spec)
    metric = study.user_attrs["metric"]
    hook = PruningHook(optuna.trial.Trial(study, trial_id), metric, spec.pruner)
    result = train(load_train_config(items), hooks=[hook])
    final = (result.final_eval or {}).get(metric, hook.last_value)
    if hook.pruned_at is not None:
        return {"state": "pruned", "value": final, "pruned_at": hook.pruned_at}
    if final is None:
        return {"state": "failed", "error": f"the run has no eval {metric}: give it validation data "
                                            f"(data.validation_file) so the sweep can compare trials"}
    return {"state": "complete", "value": float(final)}


def die_with_parent() -> None:
    """A sweep killed outright (SIGKILL) takes its trials with it (Linux); its next run queues them again."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the sweep died before the line above
        os._exit(143)


def main(argv: list[str]) -> int:
    import signal

    from lorakit.cli.main import _raise_terminated

    result_path, spec_json, trial_id, *items = argv
    die_with_parent()
    signal.signal(signal.SIGTERM, _raise_terminated)  # the run cleans up as on Ctrl-C (trackers, its folder)
    try:
        outcome = run_trial(StudySpec.from_json(spec_json), int(trial_id), items)
    except LorakitError as exc:  # a refused config or a diverged run: the study records why and goes on
        outcome = {"state": "failed", "error": str(exc)}
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or a crash in this trial only: its log keeps the traceback
        traceback.print_exc()
        outcome = {"state": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    path = Path(result_path)
    replace_files(path.parent, {path.name: (json.dumps(outcome) + "\n").encode()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
