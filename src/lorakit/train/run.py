"""Run one training job: pick the loop for the config's task and drive it (also under torchrun, where every process
calls `train`). Apart from trainer.py so that the loops (train/trainer.py's Trainer, train/diffusion/trainer.py's
subclass) import nothing back from the code that chooses between them."""

from __future__ import annotations

import gc
from collections.abc import Sequence

import torch

from lorakit.train import distributed as D
from lorakit.train.config import TrainConfig
from lorakit.train.diffusion.trainer import DiffusionTrainer
from lorakit.train.hooks import TrainHook
from lorakit.train.trainer import Trainer, TrainResult

LOOPS: dict[str, type[Trainer]] = {"text-to-image": DiffusionTrainer}  # model.task -> its loop; others: Trainer


def check_start(cfg: TrainConfig, resume: bool | str | None = None, world_size: int = 1) -> None:
    """Run every start-up check of `train` (config, paths, data, model, targets, sinks, the checkpoint to resume)
    for a run of `world_size` processes, and write nothing. Raises what the run would raise at start."""
    trainer_class(cfg)(cfg, resume=resume, check_only=True, world_size=world_size)
    gc.collect()  # the model it loaded goes before the workers load theirs
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trainer_class(cfg: TrainConfig) -> type[Trainer]:
    """The loop for the config's task: text-to-image has its own (train/diffusion/trainer.py)."""
    return LOOPS.get(cfg.model.task, Trainer)


def train(cfg: TrainConfig, hooks: Sequence[TrainHook] = (), resume: bool | str | None = None) -> TrainResult:
    """Run one training job (also under torchrun: every process calls this)."""
    trainer = trainer_class(cfg)(cfg, hooks, resume)
    try:
        result = trainer.train()
        D.barrier(trainer.dist)  # every rank done before any tears the group down (gloo aborts a rank otherwise)
        return result
    finally:
        D.shutdown(trainer.dist)
