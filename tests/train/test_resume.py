"""Exact resume: a run killed at any point and resumed ends with the same adapter, bit for bit, as a run that
was never interrupted (dropout, warmup + cosine schedule, accumulation, weight decay and evaluations all on, so
every piece of state - RNG, scheduler, optimizer moments, data position - has to come back exactly)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli.main import main
from lorakit.train.hooks import TrainHook
from lorakit.train.metrics import read_metrics
from lorakit.train.run import train
from lorakit.train.state import CheckpointError
from lorakit.train.trainer import Trainer
from tests.train.runs import config_of, make_run

SETTINGS = dict(
    lora={"lora_dropout": 0.2},
    training={"max_steps": 30, "save_every": 3, "eval_every": 5, "grad_accum": 2, "batch_size": 2,
              "scheduler": "cosine", "warmup_steps": 4, "weight_decay": 0.1, "lr": 5e-3,
              "loraplus_lr_ratio": 4.0},
)


def assert_same_adapter(a: Path, b: Path) -> None:
    first, second = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:2]}"


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.slow
def test_sigkill_and_resume_give_the_same_adapter_bit_for_bit(tmp_path):
    config = make_run(tmp_path, "causal", **SETTINGS)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(["train", str(config), f"output.dir={reference}"]) == 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(config), f"output.dir={killed}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not (killed / "adapter_model.safetensors").exists(), "the run finished before it could be killed"

    assert main(["train", str(config), f"output.dir={killed}", "--resume"]) == 0
    assert_same_adapter(reference, killed)
    assert losses(killed) == losses(reference)  # the metrics file reads as one uninterrupted run


class StopAt(TrainHook):
    """Simulates a crash right after optimizer step `step` (between checkpoints)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, model, step):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("crash_after", [0, 4, 5])  # before any checkpoint, between two, right at one
def test_resume_after_a_crash_at_other_points(tmp_path, crash_after):
    settings = {**SETTINGS, "training": {**SETTINGS["training"], "max_steps": 9}}
    config = make_run(tmp_path, "causal", **settings)
    reference = train(config_of(config, f"output.dir={tmp_path / 'reference'}")).output_dir
    crashed = config_of(config, f"output.dir={tmp_path / 'crashed'}")
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, hooks=[StopAt(crash_after)]).train()
    # a checkpoint half-written when the crash came is ignored
    (tmp_path / "crashed" / "checkpoints" / ".tmp-step-00000009-x").mkdir(parents=True)
    train(crashed, resume=True)
    assert_same_adapter(reference, tmp_path / "crashed")


def test_resume_refuses_a_changed_config(tmp_path):
    config = make_run(tmp_path, "causal", training={"max_steps": 3, "save_every": 3})
    train(config_of(config))
    with pytest.raises(CheckpointError, match=r"different settings: \['lora.r'\]"):
        train(config_of(config, "lora.r=8"), resume=True)


def test_resume_may_extend_max_steps(tmp_path):
    config = make_run(tmp_path, "causal", training={"max_steps": 6, "save_every": 3})
    reference = train(config_of(config, f"output.dir={tmp_path / 'reference'}")).output_dir
    train(config_of(config, "training.max_steps=3"))
    train(config_of(config, "training.max_steps=6"), resume=True)
    # constant schedule: stopping at 3 and extending to 6 is the same run as 6 at once
    assert_same_adapter(reference, tmp_path / "out")


def test_a_fresh_run_into_a_used_output_dir_is_refused(tmp_path):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    train(config_of(config))
    with pytest.raises(Exception, match="already holds a training run; pass --resume"):
        train(config_of(config))
    train(config_of(config, "output.overwrite=true"))  # explicitly allowed


class Counter(TrainHook):
    """A hook with state: how many optimizer steps it has seen (must survive a resume)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, model, step):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_hook_state_goes_into_checkpoints(tmp_path):
    config = make_run(tmp_path, "causal", training={"max_steps": 6, "save_every": 3})
    crashed = config_of(config)
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, hooks=[Counter(), StopAt(4)]).train()
    resumed = Counter()
    train(crashed, hooks=[resumed, StopAt(-1)], resume=True)  # from step 3: three more steps
    assert resumed.steps == 6
