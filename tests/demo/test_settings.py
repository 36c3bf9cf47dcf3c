"""The demo's settings are defined once (src/lorakit/data/demo.yaml; configs/demo.yaml is an exact copy), its
methods are listed in that file's header, and data.train_file=null means Rotten Tomatoes split by movie."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.demo.settings import DEMO_CONFIG_FILE, DEMO_YAML, demo_data_files, demo_methods
from lorakit.errors import ConfigError
from lorakit.train.config import load_config
from lorakit.train.prepare import resolve_config
from tests.corpora.fake_rotten_tomatoes import install_fake_rotten_tomatoes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_configs_demo_yaml_is_a_copy_of_the_embedded_config():
    assert (CONFIGS / "demo.yaml").read_bytes() == DEMO_CONFIG_FILE.read_bytes()


def test_the_file_alone_is_the_lora_run_on_the_default_model_and_data():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.training.method == "lora" and cfg.model.path is None and cfg.data.train_file is None


def test_the_header_lists_probe_lora_full_as_overrides_that_load():
    methods = demo_methods()
    assert list(methods) == ["probe", "lora", "full"]
    for method, overrides in methods.items():
        cfg = load_config(None, overrides, base=DEMO_YAML)
        assert cfg.training.method == method
    full, lora = (load_config(None, methods[m], base=DEMO_YAML) for m in ("full", "lora"))
    assert full.training.lr < lora.training.lr  # full fine-tuning moves every weight: a far smaller lr


def test_demo_methods_reads_the_block_and_stops_at_its_end():
    text = "# intro\n# lorakit demo runs:\n#   a: training.lr=1\n#   b:\n#\n#   c: training.lr=2\nmodel: {}\n"
    assert demo_methods(text) == {"a": ["training.lr=1"], "b": []}
    with pytest.raises(ConfigError, match="no '# lorakit demo runs:' block"):
        demo_methods("model: {}\n")


def test_null_train_file_means_the_rotten_tomatoes_splits(tmp_path, monkeypatch):
    install_fake_rotten_tomatoes(tmp_path, monkeypatch)
    files = demo_data_files()
    resolved = resolve_config(load_config(None, base=DEMO_YAML))
    assert (resolved.data.train_file, resolved.data.validation_file, resolved.data.test_file) == (
        files["train"], files["validation"], files["test"])
    assert all(Path(path).is_file() for path in files.values())
    assert {Path(path).parent.name for path in files.values()} == {"rotten-tomatoes-splits-v1"}


def test_a_validation_split_keeps_the_test_split_and_no_validation_file(tmp_path, monkeypatch):
    install_fake_rotten_tomatoes(tmp_path, monkeypatch)
    resolved = resolve_config(load_config(None, ["data.validation_split=0.1"], base=DEMO_YAML))
    assert resolved.data.validation_file is None and resolved.data.test_file == demo_data_files()["test"]


def test_a_test_file_of_ones_own_is_kept_and_made_absolute(tmp_path, monkeypatch):
    install_fake_rotten_tomatoes(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_config(load_config(None, ["data.test_file=mine.jsonl"], base=DEMO_YAML))
    assert resolved.data.test_file == str(tmp_path.resolve() / "mine.jsonl")


def test_null_train_file_with_a_model_of_ones_own_is_refused(tmp_path):
    cfg = load_config(None, [f"model.path={tmp_path}"], base=DEMO_YAML)
    with pytest.raises(ConfigError, match=r"data\.train_file is not set"):
        resolve_config(cfg)
