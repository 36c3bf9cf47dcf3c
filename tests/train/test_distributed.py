"""Two CPU processes (torchrun, gloo) with batch b follow the same loss curve as one process with batch 2b, and
end with the same adapter - with DDP (replicated base) and with FSDP (sharded base)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lorakit.train.distributed import DistInfo, no_sync, sum_across
from lorakit.train.metrics import read_metrics
from lorakit.train.run import train
from tests.train.runs import config_of, make_run


def curve(out) -> torch.Tensor:
    return torch.tensor([r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    config = make_run(tmp, "causal", training={"max_steps": 6, "batch_size": 4, "grad_accum": 1})
    return config, train(config_of(config, f"output.dir={tmp / 'one'}")).output_dir


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_with_half_the_batch_match_one_process(one_process, mode):
    config, reference = one_process
    out = config.parent / mode
    command = [sys.executable, "-m", "lorakit", "train", str(config), "--nproc", "2", "training.batch_size=2",
               f"training.distributed={mode}", f"output.dir={out}"]
    done = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("lorakit train: done") == 1  # only rank 0 reports (and writes)
    # same examples per step, split over two processes: equal up to float32 summation order
    torch.testing.assert_close(curve(out), curve(reference))
    two = load_file(str(out / "adapter_model.safetensors"))
    one = load_file(str(reference / "adapter_model.safetensors"))
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key])


def test_single_process_helpers_are_no_ops():
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert sum_across([1.5, 2.0], info) == [1.5, 2.0]
    model = torch.nn.Linear(2, 2)
    with no_sync(model, last_micro_batch=False):  # a plain module has no no_sync: nothing to skip
        pass
