"""SIGTERM (kill, timeout, a scheduler's stop) ends `lorakit train` the way Ctrl-C does: the trackers record a failed
run instead of one left "running" forever, and the command says so and exits 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train.runs import make_run


@pytest.mark.slow
def test_sigterm_marks_the_mlflow_run_failed_and_exits_143(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    config = make_run(tmp_path, "causal", training={"max_steps": 100_000}, output={"report_to": ["mlflow"]})
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"file://{tmp_path / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true",
           "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(config)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.5)  # until the first step is logged: training is under way
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert "lorakit train: terminated (SIGTERM)" in err

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    client = MlflowClient(f"file://{tmp_path / 'mlruns'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.status for run in runs] == ["FAILED"]
