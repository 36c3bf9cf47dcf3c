"""How to rebuild the model an adapter was trained on, for commands that load a base for it (merge, combine)."""

from __future__ import annotations

from pathlib import Path

import yaml

from lorakit.errors import ConfigError
from lorakit.hf.config import TASK_TYPES, ModelConfig
from lorakit.hf.paths import task_of_checkpoint
from lorakit.io.checkpoint import read_adapter
from lorakit.io.keys import PREFIX
from lorakit.io.wrapped import HEAD_SHA, read_head

ADAPTER_TASKS = {peft: task for task, peft in TASK_TYPES.items()}  # PEFT task_type -> model.task
HEAD_SUFFIXES = (".classifier.weight", ".score.weight", ".classifier.out_proj.weight")  # a saved head's weight


def model_config_for_adapter(adapter_dir: Path, task: str = "auto",
                             base: Path | None = None) -> tuple[ModelConfig | None, list[str] | None]:
    """How to rebuild the model an adapter was trained on: (ModelConfig or None for a bare AutoModel, labels).

    Reads the run's train_config.yaml next to the adapter when there is one, else the adapter's task_type,
    else the base checkpoint's architecture."""
    run_file = Path(adapter_dir) / "train_config.yaml"
    run = yaml.safe_load(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    model_section = dict(run.get("model") or {})
    labels = (run.get("data") or {}).get("labels")
    lora, records, tensors, directory = read_adapter(adapter_dir)
    head = read_head(directory, records.get(HEAD_SHA))  # a mean-pooling classifier's head (io/wrapped.py)
    if task == "auto":
        task = model_section.get("task") or ("seq-cls" if head else ADAPTER_TASKS.get(lora.task_type or ""))
        task = task or (task_of_checkpoint(base) if base is not None else "base")
    if task == "base":
        return None, None
    same_run = model_section.get("task") == task
    pooling = model_section.get("pooling", "auto") if same_run else ("mean" if head else "auto")
    tensors = {**tensors, **{PREFIX + k: v for k, v in head.items()}}
    # a QLoRA run: the base as it was trained (quantized), so a merge can report how far it moves the outputs
    quant = {k: model_section[k] for k in ("quantization", "compute_dtype", "double_quant")
             if same_run and model_section.get(k) is not None}
    if task == "seq-cls" and not labels:
        heads = [t for k, t in tensors.items() if k.endswith(HEAD_SUFFIXES)]
        if not heads:
            raise ConfigError(f"{adapter_dir}: a seq-cls adapter without a saved classification head "
                              "(modules_to_save); cannot tell the number of labels")
        labels = [f"LABEL_{i}" for i in range(heads[0].shape[0])]
    return ModelConfig(task=task, pooling=pooling, **quant), labels
