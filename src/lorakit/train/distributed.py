"""torch.distributed for the trainer: process-group setup (gloo on CPU, nccl on GPU), DDP / FSDP wrapping,
the few collectives the loop needs, and `lorakit train --nproc N` (re-launch under torchrun).

Every process runs the same loop on its share of each global batch; only rank 0 writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lorakit.errors import ConfigError


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mode: str = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={preference!r} but no CUDA GPU is available; use device=cpu or auto")
    if preference == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(preference)


def init_distributed(device_preference: str, mode: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, mode=mode)


def shutdown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP (every process holds the whole base) or FSDP2 (parameters sharded per block and at the root)."""
    if not info.active:
        return model
    if info.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):  # the repeated transformer blocks
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def no_sync(model: nn.Module, last_micro_batch: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if last_micro_batch or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def sum_across(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of a few numbers over all processes (float64, so sums of losses stay exact enough)."""
    if not info.active:
        return list(values)
    device = info.device if info.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


@contextmanager
def gathered_state(model: nn.Module, info: DistInfo) -> Iterator[None]:
    """Under FSDP, make `model.state_dict()` return whole (unsharded) trainable and adapter tensors for the
    duration of a save (lorakit.save_adapter reads the state dict). A collective: every rank must enter."""
    if not (info.active and info.mode == "fsdp"):
        yield
        return
    module = unwrap(model)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    full = {}
    for name, tensor in module.state_dict().items():
        if name in trainable or "lora_" in name or "modules_to_save" in name:
            full[name] = (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().cpu()
    module.state_dict = lambda *args, **kwargs: dict(full)  # an instance attribute shadows the method
    try:
        yield
    finally:
        del module.state_dict


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """`lorakit train --nproc N ...`: run the same command under torchrun with N processes on this machine."""
    if nproc < 1:
        raise ConfigError(f"--nproc={nproc}: expected a positive number of processes")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # torchrun would say 1
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lorakit", "train", *argv]
    return subprocess.call(command, env=env)
