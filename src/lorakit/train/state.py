"""Training checkpoints that resume exactly: trainable tensors, optimizer, scheduler, RNG states, data position.

A checkpoint is a directory <output>/checkpoints/step-00000012/ holding
    adapter/                  the adapter in PEFT format (usable on its own)
    trainable.safetensors     every trainable tensor, bit-exact (also heads and biases the adapter file keeps)
    optimizer.pt              optimizer.state_dict()
    trainer_state.pt          progress (step, tokens, early stopping), scheduler, per-rank RNG states, hook states
    state.json                the same progress, for people
It is written into a temporary directory and renamed into place (io/atomic.py), so a run killed at any moment
leaves either the previous checkpoints or the complete new one. The data position is the step count: the order of the
examples is a pure function of (seed, epoch), so step N always continues with the same batch.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.errors import LorakitError
from lorakit.io.atomic import atomic_directory, recover_directory
from lorakit.io.checkpoint import save_adapter

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"step-(\d{8})")
recover = recover_directory  # the crash-safe directory writes live in io/atomic.py; the run folder calls this name


class CheckpointError(LorakitError):
    """A checkpoint to resume from is missing, incomplete, or does not fit this run."""


@dataclass
class Progress:
    """Where training stands; everything the loop needs besides tensors to continue exactly."""

    step: int = 0  # optimizer steps done (the data position: the next batch is a function of it)
    tokens: int = 0  # non-padding input tokens seen
    elapsed_s: float = 0.0  # training time of earlier sessions of this run
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    last_eval_step: int = -1
    stopped_early: bool = False


# -- data position ----------------------------------------------------------------------------------------------
def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch), the same on every process."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def step_indices(step: int, num_examples: int, global_batch: int, seed: int) -> list[int]:
    """The examples of optimizer step `step` (0-based): the epoch's order, cut in global batches (last one dropped)."""
    per_epoch = num_examples // global_batch
    epoch, within = divmod(step, per_epoch)
    return epoch_order(num_examples, seed, epoch)[within * global_batch:(within + 1) * global_batch]


# -- RNG --------------------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# -- the tensors that change during training ---------------------------------------------------------------------
def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters, plus adapter buffers (variants may keep state there), by model key."""
    out = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    for name, buffer in model.named_buffers():
        if ("lora_" in name or "modules_to_save" in name) and buffer is not None:
            out[name] = buffer.detach()
    return {k: v.to("cpu").contiguous() for k, v in out.items()}


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    expected = set(trainable_tensors(model))
    missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - set(targets))
    if missing or unknown:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model (missing {missing[:3]}, unexpected {unknown[:3]}); "
            "was it written by a run with another model or lora config?"
        )
    with torch.no_grad():
        for key, tensor in tensors.items():
            target = targets[key]
            if target.shape != tensor.shape:
                raise CheckpointError(f"checkpoint {source}: {key} is {tuple(tensor.shape)}, the model has "
                                      f"{tuple(target.shape)}")
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))


# -- save / find / load ------------------------------------------------------------------------------------------
def save_checkpoint(root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    progress: Progress, hooks: list, rng_states: list[dict], config_yaml: str,
                    adapter_name: str, keep: int, with_adapter: bool = True) -> Path:
    """Write checkpoint step-<progress.step> under root atomically and drop all but the `keep` newest.
    with_adapter=False: a run without an adapter (training.method full / probe) keeps trainable.safetensors only."""
    target = Path(root) / f"step-{progress.step:08d}"
    with atomic_directory(target) as tmp:
        if with_adapter:
            save_adapter(model, tmp / "adapter", adapter_name)
        save_file(trainable_tensors(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({
            "progress": dataclasses.asdict(progress), "scheduler": scheduler.state_dict(), "rng": rng_states,
            "hooks": [hook.state_dict() for hook in hooks], "world_size": len(rng_states), "config": config_yaml,
        }, tmp / "trainer_state.pt")
        (tmp / "state.json").write_text(json.dumps(dataclasses.asdict(progress), indent=2) + "\n")
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.fullmatch(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]
    optimizer: dict
    state: dict

    @property
    def progress(self) -> Progress:
        return Progress(**self.state["progress"])


def read_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    needed = ["trainable.safetensors", "optimizer.pt", "trainer_state.pt"]
    absent = [name for name in needed if not (path / name).is_file()]
    if absent:
        raise CheckpointError(f"{path} is not a complete lorakit training checkpoint (missing {absent})")
    try:
        return Checkpoint(
            path=path,
            tensors=load_file(str(path / "trainable.safetensors")),
            optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
            state=torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True),
        )
    except Exception as exc:  # corrupt files: torch / safetensors raise their own types
        raise CheckpointError(f"checkpoint {path} could not be read ({exc})") from None


# settings a resumed run may change without breaking exactness of the steps it shares with the first run
RESUMABLE_CHANGES = {"training.max_steps", "training.epochs", "training.eval_every", "training.save_every",
                     "training.keep_checkpoints", "training.log_every", "training.progress",
                     "training.early_stopping_patience"}


def changed_settings(saved_yaml: str, now: dict[str, dict[str, Any]]) -> list[str]:
    """The settings that shape the steps and differ between a saved run's config (YAML) and `now`."""
    import yaml

    saved = yaml.safe_load(saved_yaml) or {}
    return sorted(
        f"{section}.{key}" for section in now if section != "output"
        for key in set(now[section] or {}) | set(saved.get(section) or {})
        if (now[section] or {}).get(key) != (saved.get(section) or {}).get(key)
        and f"{section}.{key}" not in RESUMABLE_CHANGES
    )


def check_same_run(saved_yaml: str, now: dict[str, dict[str, Any]], path: Path) -> None:
    """A checkpoint continues only the run that wrote it: the settings that shape the steps must agree."""
    changed = changed_settings(saved_yaml, now)
    if changed:
        raise CheckpointError(
            f"checkpoint {path} was written with different settings: {changed}; a resumed run must use the same "
            f"config (it may change only {sorted(RESUMABLE_CHANGES)} and output.*)"
        )
