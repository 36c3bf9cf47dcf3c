"""Sweeps end to end through `lorakit sweep` processes on a tiny model: two sweeps sharing one study (SQLite and a
real PostgreSQL server), a killed sweep resuming, failed and diverged trials recorded, a trial pruned, repeats reused.
Each trial is a real training run in its own process (about 10 s here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

from lorakit.sweep.study import quiet_optuna
from tests.train.runs import make_run

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def tiny_config(tmp_path: Path, **training) -> Path:
    return make_run(tmp_path, "cls", training={"max_steps": 4, "eval_every": 2, "metric": "loss", **training})


def write_space(tmp_path: Path, space: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False), encoding="utf-8")
    return path


def sweep(config: Path, space: Path, out: Path, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "lorakit", "sweep", str(config), "--space", str(space), "--out", str(out),
               "--threads-per-trial", "1", *options]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def load(storage: str, name: str) -> optuna.Study:
    quiet_optuna()
    return optuna.load_study(study_name=name, storage=storage)


def overlap(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
    return a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete


def two_sweeps_share_one_study(tmp_path: Path, storage: str) -> None:
    config = tiny_config(tmp_path)
    space = write_space(tmp_path, {"training.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                                   "lora.r": [2, 4, 8]})
    options = ("--trials", "4", "--storage", storage, "--study", "shared", "--sampler", "random")
    first = sweep(config, space, tmp_path / "a", *options)
    second = sweep(config, space, tmp_path / "b", *options)
    outputs = [finish(first), finish(second)]
    study = load(storage, "shared")
    trials = study.get_trials()
    assert len(trials) >= 4 and all(t.state == TrialState.COMPLETE for t in trials)  # a near-simultaneous ask
    assert len({t.number for t in trials}) == len(trials)  # may add one more, never a lost or doubled trial
    by_process = {}
    for trial in trials:
        by_process.setdefault(trial.user_attrs["pid"], []).append(trial)
        assert (Path(trial.user_attrs["run_dir"]) / "adapter_model.safetensors").is_file()
        assert trial.value == pytest.approx(trial.user_attrs["summary"]["final_eval"]["loss"])
    assert len(by_process) == 2, outputs  # both sweeps ran trials ...
    one, other = by_process.values()
    assert any(overlap(a, b) for a in one for b in other)  # ... at the same time


def test_two_sweep_processes_share_one_sqlite_study(tmp_path):
    two_sweeps_share_one_study(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


def test_two_sweep_processes_share_one_postgresql_study(tmp_path, postgres_url):
    two_sweeps_share_one_study(tmp_path, postgres_url)


def test_a_killed_sweep_resumes_without_repeating_finished_trials(tmp_path):
    config = tiny_config(tmp_path, max_steps=40, eval_every=20)  # trials long enough to be killed mid-run
    space = write_space(tmp_path, {"lora.r": [2, 4, 8]})
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    options = ("--trials", "3", "--sampler", "grid", "--pruner", "none")
    process = sweep(config, space, out, *options)
    wait_for_running_trial(process, storage, finished=1)  # the second trial is training
    running = [t for t in load(storage, "sweep").get_trials() if t.state == TrialState.RUNNING]
    process.send_signal(signal.SIGKILL)  # no clean-up at all; its trial process dies with it
    process.communicate()
    done_before = {t.number: (t.params, t.value) for t in load(storage, "sweep").get_trials()
                   if t.state == TrialState.COMPLETE}
    adapter = Path(load(storage, "sweep").trials[min(done_before)].user_attrs["run_dir"]) / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns

    output = finish(sweep(config, space, out, *options))
    assert "1 interrupted one(s) queued again" in output
    study = load(storage, "sweep")
    trials = study.get_trials()
    for number, (params, value) in done_before.items():  # kept, not run again
        assert trials[number].state == TrialState.COMPLETE and (trials[number].params, trials[number].value) == \
            (params, value)
    assert adapter.stat().st_mtime_ns == stamp
    killed = trials[running[0].number]
    assert killed.state == TrialState.FAIL
    retried = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE and retried[0].params == killed.params
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lora.r"] for t in complete) == [2, 4, 8]  # the whole grid, each point once
    assert (out / "best" / "adapter_model.safetensors").is_file() and (out / "sweep.md").is_file()


def wait_for_running_trial(process: subprocess.Popen, storage: str, finished: int) -> None:
    """Until the study has `finished` complete trials and one running (training for a few seconds)."""
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(1)
        if Path(storage.removeprefix("sqlite:///")).is_file():
            try:  # the file may exist before the study does
                states = [t.state for t in load(storage, "sweep").get_trials()]
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):
                continue
            if states.count(TrialState.COMPLETE) == finished and TrialState.RUNNING in states:
                time.sleep(3)
                return
    process.kill()
    pytest.fail("the sweep did not reach its trial: " + process.communicate()[0])


def test_sigterm_stops_the_trials_and_queues_them_again(tmp_path):
    config = tiny_config(tmp_path, max_steps=40, eval_every=20)
    space = write_space(tmp_path, {"lora.r": [2, 4]})
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    options = ("--trials", "2", "--sampler", "grid", "--pruner", "none")
    process = sweep(config, space, out, *options)
    wait_for_running_trial(process, storage, finished=0)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143 and "terminated (SIGTERM)" in output and "Traceback" not in output, output
    assert "interrupted; its parameters are queued for the next run" in output
    trials = load(storage, "sweep").get_trials()
    stopped = trials[0]
    assert stopped.state == TrialState.FAIL
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].system_attrs["fixed_params"] == stopped.params
    assert (out / "sweep.md").is_file()  # the report of what there is
    finish(sweep(config, space, out, *options))
    complete = [t for t in load(storage, "sweep").get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lora.r"] for t in complete) == [2, 4]


def test_failed_and_diverged_trials_are_recorded_and_the_study_goes_on(tmp_path):
    config = tiny_config(tmp_path, max_steps=2)
    space = write_space(tmp_path, {"lora.target_modules": {"choices": {"ok": ["query", "value"],
                                                                        "none": ["no_such_layer"]}},
                                   "training.lr": [1e-2, 1e30]})
    out = tmp_path / "sweep"
    output = finish(sweep(config, space, out, "--sampler", "grid", "--pruner", "none", "--workers", "2"))
    study = load(f"sqlite:///{out / 'study.db'}", "sweep")
    by_params = {(t.params["lora.target_modules"], t.params["training.lr"]): t for t in study.get_trials()}
    assert len(by_params) == 4
    assert by_params["ok", 1e-2].state == TrialState.COMPLETE
    diverged = by_params["ok", 1e30]
    assert diverged.state == TrialState.FAIL and "not finite" in diverged.user_attrs["error"]
    for lr in (1e-2, 1e30):
        failed = by_params["none", lr]
        assert failed.state == TrialState.FAIL and "no_such_layer" in failed.user_attrs["error"]
        assert "\n" not in failed.user_attrs["error"]
    assert "FAILED" in output and "1 complete, 0 pruned, 3 fail" in output
    report = (out / "sweep.md").read_text()
    assert "no_such_layer" in report and "not finite" in report


def test_a_trial_trailing_the_others_is_pruned_early(tmp_path):
    config = tiny_config(tmp_path, max_steps=8, eval_every=2)
    space = write_space(tmp_path, {"training.lr": [3e-2, 2e-2, 1e-2, 1e-7]})
    out = tmp_path / "sweep"
    storage = f"sqlite:///{out / 'study.db'}"
    out.mkdir()
    quiet_optuna()
    study = optuna.create_study(study_name="sweep", storage=storage)  # the order the trials run in
    for lr in (3e-2, 2e-2, 1e-2, 1e-7):
        study.enqueue_trial({"training.lr": lr})
    finish(sweep(config, space, out, "--trials", "4", "--sampler", "random", "--pruner", "median"))
    trials = load(storage, "sweep").get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE] * 3
    slow = trials[3]  # lr 1e-7 barely moves the loss: worse than the median at its first eval
    assert slow.params["training.lr"] == 1e-7 and slow.state == TrialState.PRUNED
    assert slow.user_attrs["pruned_at"] == 2 and slow.user_attrs["summary"]["steps"] == 2
    assert all(t.user_attrs["summary"]["steps"] == 8 for t in trials[:3])
    assert (Path(slow.user_attrs["run_dir"]) / "adapter_model.safetensors").is_file()


def test_a_repeated_draw_reuses_the_finished_result(tmp_path):
    config = tiny_config(tmp_path, max_steps=2)
    space = write_space(tmp_path, {"lora.r": [4]})  # one point: every later trial repeats it
    out = tmp_path / "sweep"
    output = finish(sweep(config, space, out, "--trials", "3", "--sampler", "random", "--pruner", "none"))
    trials = load(f"sqlite:///{out / 'study.db'}", "sweep").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.user_attrs.get("same_as") for t in trials] == [None, 0, 0]
    assert trials[1].value == trials[2].value == trials[0].value
    assert output.count("without training again") == 2
    assert not (out / "trials" / "trial-0001").exists()
