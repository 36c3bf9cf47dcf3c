"""The demo's settings are defined once (src/lorakit/data/demo.yaml); configs/demo.yaml is an exact copy."""

from __future__ import annotations

from pathlib import Path

from lorakit.demo.settings import DEMO_CONFIG_FILE, DEMO_YAML, demo_data_files
from lorakit.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_configs_demo_yaml_is_a_copy_of_the_embedded_config():
    assert (CONFIGS / "demo.yaml").read_bytes() == DEMO_CONFIG_FILE.read_bytes()


def test_the_embedded_config_is_what_the_demo_runs():
    assert DEMO_CONFIG_FILE.read_text(encoding="utf-8") == DEMO_YAML
    cfg = load_config(None, base=DEMO_YAML)
    assert cfg.model.path is None and cfg.data.train_file is None  # the embedded model and dataset


def test_the_demo_dataset_ships_inside_the_package():
    train, test = demo_data_files()
    assert Path(train).is_file() and Path(test).is_file()
    assert Path(train).parent == DEMO_CONFIG_FILE.parent
