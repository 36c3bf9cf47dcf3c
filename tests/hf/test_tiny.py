"""Tiny random models: every architecture writes a directory the hf loaders read back."""

from __future__ import annotations

import pytest

from lorakit.hf.config import ModelConfig
from lorakit.hf.models import load_model
from lorakit.hf.paths import resolve_model_path, task_of_checkpoint
from lorakit.hf.tiny import ARCHS, make_tiny_model
from lorakit.hf.tokenizer import load_tokenizer


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_loads_back(tmp_path, arch):
    path = resolve_model_path(str(make_tiny_model(tmp_path / arch, arch)))
    tokenizer = load_tokenizer(path)
    assert tokenizer("the cat").input_ids
    task = task_of_checkpoint(path)
    if task != "base":
        model = load_model(ModelConfig(task=task), path)
        assert sum(p.numel() for p in model.parameters()) > 0
