"""Model directories: a clear error for a directory without a model, and the task a checkpoint implies."""

from __future__ import annotations

import json

import pytest

from lorakit.errors import ConfigError
from lorakit.hf.paths import resolve_model_path, task_of_checkpoint


def test_a_directory_without_config_json_is_a_clear_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"expected a Hugging Face model directory.*weights\.bin"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize(("architecture", "task"), [
    ("LlamaForCausalLM", "causal-lm"), ("BertForSequenceClassification", "seq-cls"),
    ("T5ForConditionalGeneration", "seq2seq"), ("BertModel", "base"),
])
def test_task_of_checkpoint_reads_the_architecture(tmp_path, architecture, task):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    assert task_of_checkpoint(tmp_path) == task
