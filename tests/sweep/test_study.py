"""The study: storage URLs, joining a study only for the same search, and trials a dead sweep left running."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from lorakit.errors import ConfigError
from lorakit.sweep import study as S
from lorakit.sweep.space import parse_space
from lorakit.sweep.worker import counted_trials, recover_interrupted

SPACE = parse_space({"lora.r": [4, 8]})


def spec(tmp_path, **kwargs) -> S.StudySpec:
    return S.StudySpec(storage=f"sqlite:///{tmp_path / 'study.db'}", name="s", **kwargs)


def test_storage_urls(tmp_path):
    assert S.storage_url(None, tmp_path) == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    assert S.storage_url("x.db", tmp_path).startswith("sqlite:////") and S.storage_url("x.db", tmp_path).endswith(
        "/x.db")
    assert S.storage_url("postgresql+psycopg://u:p@h/db", tmp_path) == "postgresql+psycopg://u:p@h/db"
    assert S.redact("postgresql+psycopg://me:secret@host:5432/db") == "postgresql+psycopg://me:***@host:5432/db"
    assert S.redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_an_unreachable_server_is_one_line_without_the_password():
    with pytest.raises(ConfigError, match=r"cannot open it .*check the URL") as info:
        S.open_storage("postgresql+psycopg://me:secret@127.0.0.1:9/db")  # nothing listens on port 9
    assert "secret" not in str(info.value) and "\n" not in str(info.value)


def test_a_study_is_joined_only_for_the_same_search(tmp_path):
    first = S.open_study(spec(tmp_path), SPACE, "accuracy", {"config": "a.yaml"})
    assert first.direction == optuna.study.StudyDirection.MAXIMIZE
    assert first.user_attrs["metric"] == "accuracy" and first.user_attrs["config"] == "a.yaml"
    again = S.open_study(spec(tmp_path), SPACE, "accuracy", {"config": "a.yaml"})
    assert again._study_id == first._study_id
    with pytest.raises(ConfigError, match=r"was made with another search space.*--study NAME"):
        S.open_study(spec(tmp_path), parse_space({"lora.r": [4, 16]}), "accuracy", {})
    with pytest.raises(ConfigError, match="was made with another metric"):
        S.open_study(spec(tmp_path), SPACE, "loss", {})
    loss = S.open_study(S.StudySpec(storage=spec(tmp_path).storage, name="by-loss"), SPACE, "loss", {})
    assert loss.direction == optuna.study.StudyDirection.MINIMIZE


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_trial_whose_sweep_died_on_this_machine_is_failed_and_queued_again(tmp_path):
    study = S.open_study(spec(tmp_path), SPACE, "accuracy", {})
    done = study.ask()
    study.tell(done, 0.5)
    alive = study.ask()  # this process's: left alone
    alive.set_user_attr("host", socket.gethostname())
    alive.set_user_attr("pid", 1)
    orphan = study.ask()
    SPACE.suggest(orphan)
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", dead_pid())
    assert counted_trials(study) == 3
    assert recover_interrupted(study) == 1
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING and trials[done.number].state == TrialState.COMPLETE
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].system_attrs["fixed_params"] == trials[orphan.number].params
    assert queued[0].user_attrs["retry_of"] == orphan.number
    assert counted_trials(study) == 3  # the interrupted trial is replaced, not counted twice


def test_a_trial_without_heartbeat_from_another_machine_is_failed_and_queued_again(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "HEARTBEAT_S", 1)
    monkeypatch.setattr(S, "GRACE_S", 1)
    study = S.open_study(spec(tmp_path), SPACE, "accuracy", {})
    remote = study.ask()
    SPACE.suggest(remote)
    remote.set_user_attr("host", "another-machine")
    remote.set_user_attr("pid", 123)
    study._storage.record_heartbeat(remote._trial_id)
    assert recover_interrupted(study) == 0  # its heartbeat is fresh
    time.sleep(2.5)
    assert recover_interrupted(study) == 1
    trials = study.get_trials()
    assert trials[remote.number].state == TrialState.FAIL
    assert [t.user_attrs.get("retry_of") for t in trials if t.state == TrialState.WAITING] == [remote.number]


def test_the_grid_never_hands_a_running_point_to_a_second_worker(tmp_path):
    space = parse_space({"lora.r": [4, 8]})
    study = S.open_study(spec(tmp_path, sampler="grid"), space, "accuracy", {})
    first, second = study.ask(), study.ask()
    assert {space.suggest(first)["lora.r"], space.suggest(second)["lora.r"]} == {4, 8}
    assert study.sampler.is_exhausted(study)  # both points running: nothing new to start
    study.tell(first, 0.5)
    assert study.sampler.is_exhausted(study)
    other = S.open_study(S.StudySpec(storage=spec(tmp_path).storage, name="g2", sampler="grid"), space, "accuracy", {})
    only = other.ask()
    space.suggest(only)
    assert not other.sampler.is_exhausted(other)  # one point left
