"""TrainConfig: YAML + overrides, coercion by field type, and errors that name the bad key / value and the
valid candidates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorakit.demo.settings import DEMO_YAML
from lorakit.errors import ConfigError
from lorakit.train.config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_values_and_overrides_are_coerced_by_field_type(tmp_path):
    path = write(tmp_path, "training:\n  lr: 3e-4\n  batch_size: '16'\nlora:\n  r: 4\n")
    cfg = load_config(path, ["lora.r=16", "training.max_grad_norm=null", "lora.target_modules=[q_proj, v_proj]",
                             "training.deterministic=false", "model.task=seq-cls"])
    assert cfg.training.lr == 3e-4 and isinstance(cfg.training.lr, float)  # PyYAML reads 3e-4 as a string
    assert cfg.training.batch_size == 16
    assert cfg.lora.r == 16
    assert cfg.training.max_grad_norm is None
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.training.deterministic is False
    assert cfg.model.task == "seq-cls"


def test_dict_fields_take_dotted_keys(tmp_path):
    cfg = load_config(None, ["lora.rank_pattern.layers.0.self_attn.q_proj=2"])
    assert cfg.lora.rank_pattern == {"layers.0.self_attn.q_proj": 2}


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(None, ["training.lr=1e-3", "lora.r=4", "output.dir=x"])
    again = load_config(write(tmp_path, cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize(("override", "message"), [
    ("trainin.lr=1", r"unknown section 'trainin'; valid sections: \['model', 'lora', 'data', 'training', 'output', "
                     r"'diffusion', 'delta_lora', 'longlora'\]"),
    ("training.learning_rate=1", r"unknown key\(s\) \['training.learning_rate'\]; valid keys in 'training': .*'lr'"),
    ("lora.rank=4", r"lora: unknown LoRA config key\(s\) \['rank'\]; valid keys: .*'r'"),
    ("training.batch_size=abc", r"training.batch_size='abc': expected int"),
    ("training.batch_size=0", r"training.batch_size=0: expected a positive integer"),
    ("model.task=classify", r"model.task='classify': expected one of \['causal-lm', 'seq-cls', 'seq2seq', "
                               r"'text-to-image'\]"),
    ("training.scheduler=step", r"training.scheduler='step': expected one of \['cosine', 'linear', 'constant'\]"),
    ("model.quantization=nf3", r"model.quantization='nf3': expected one of \['nf4', 'fp4', 'int8'\] or null"),
    ("training.lr", r"expected section.key=value"),
    ("lr=1", r"expected section.key=value"),
])
def test_bad_settings_name_the_value_and_the_candidates(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_section_in_a_file(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config section\(s\) \['optimizer'\]; valid sections"):
        load_config(write(tmp_path, "optimizer:\n  lr: 1\n"))


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: line 2 is not valid YAML"):
        load_config(write(tmp_path, "training:\n  lr: @1\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")


def test_mean_pooling_needs_classification():
    with pytest.raises(ConfigError, match="pooling='mean' applies to task 'seq-cls' only"):
        load_config(None, ["model.pooling=mean"])


def test_quantization_without_the_quantize_module_is_a_clear_error(monkeypatch):
    import sys

    from lorakit.hf.config import ModelConfig
    from lorakit.hf.quantized import quantize

    monkeypatch.setitem(sys.modules, "lorakit.quantize", None)  # as if the module were absent
    with pytest.raises(ConfigError, match=r"model.quantization='nf4' needs lorakit\.quantize"):
        quantize(None, ModelConfig(quantization="nf4"))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse_and_comment_every_setting(path):
    load_config(path)
    lines = path.read_text().splitlines()
    uncommented = [  # a setting carries its comment at the end of its line or on the line above
        line for i, line in enumerate(lines)
        if line.startswith("  ") and ":" in line and not line.strip().startswith("#") and "#" not in line
        and not (i and lines[i - 1].strip().startswith("#"))
    ]
    assert not uncommented, f"settings without a comment in {path.name}: {uncommented}"


def test_configs_demo_yaml_is_what_the_demo_runs():
    assert load_config(CONFIGS / "demo.yaml") == load_config(None, base=DEMO_YAML)


def test_default_config_is_complete():
    values = yaml.safe_load(TrainConfig().to_yaml())
    assert set(values) == {"model", "lora", "data", "training", "output", "delta_lora", "longlora"}
    assert values["delta_lora"] is None and values["longlora"] is None  # variants are off unless asked for
