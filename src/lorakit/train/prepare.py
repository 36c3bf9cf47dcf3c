"""A training config made concrete before a run: resolved paths and the LoRA settings a task implies."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from torch import nn

from lorakit.config import LoraConfig
from lorakit.demo.settings import demo_data_files
from lorakit.errors import ConfigError
from lorakit.hf.classifier import head_modules
from lorakit.hf.config import TASK_TYPES
from lorakit.hf.paths import is_hub_id, resolve_model_path
from lorakit.train.chat import is_template_text
from lorakit.train.config import TrainConfig
from lorakit.train.hf_datasets import is_data_file


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """A copy with every default made concrete: model.path, data files as absolute paths (so the copy written
    next to the adapter rebuilds the same run from any directory). data.train_file=null means the demo's dataset,
    Rotten Tomatoes split by movie (its validation and test splits fill validation_file and test_file when those are
    unset), which goes with the demo's model (model.path=null)."""
    cfg = copy.deepcopy(cfg)
    if cfg.data.path is not None and is_data_file(cfg.data.path):  # one local file: lorakit's own readers
        cfg.data.train_file, cfg.data.path = cfg.data.path, None
    if cfg.data.path is not None and Path(cfg.data.path).expanduser().exists():  # a local folder; else a Hub id
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    if cfg.data.train_file is None and cfg.data.path is None:
        if cfg.model.path is not None:
            raise ConfigError("data.train_file is not set: name a JSON / JSONL / CSV / Parquet file, or set data.path "
                              "(a Hub dataset id or a datasets folder); both null mean the demo's Rotten Tomatoes "
                              "reviews, used with model.path=null")
        files = demo_data_files()
        cfg.data.train_file = files["train"]
        if cfg.data.validation_file is None and not cfg.data.validation_split:
            cfg.data.validation_file = files["validation"]
        if cfg.data.test_file is None:
            cfg.data.test_file = files["test"]
    local = resolve_model_path(cfg.model.path, cfg.model.revision)  # checked now; a Hub id stays an id
    cfg.model.path = cfg.model.path if is_hub_id(cfg.model.path) else str(local.resolve())
    for name in ("train_file", "validation_file", "test_file"):
        value = getattr(cfg.data, name)
        if value is not None:
            setattr(cfg.data, name, str(Path(value).expanduser().resolve()))
    template = cfg.data.chat_template
    if template is not None and not is_template_text(template):  # a file: absolute, as the data files
        cfg.data.chat_template = str(Path(template).expanduser().resolve())
    return cfg


def prepare_lora(cfg: TrainConfig, model: nn.Module) -> LoraConfig:
    """The LoRA config with the task's defaults filled in: task_type, the classification head trained in full."""
    lora = dataclasses.replace(cfg.lora)
    if lora.task_type is None:
        lora.task_type = TASK_TYPES[cfg.model.task]
    if cfg.model.task == "seq-cls" and lora.modules_to_save is None:
        lora.modules_to_save = head_modules(model) or None
    if lora.base_model_name_or_path is None:
        lora.base_model_name_or_path = cfg.model.path
    return lora
