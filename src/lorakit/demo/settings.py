"""What the demo runs, defined once: the config file and the dataset shipped inside lorakit.

src/lorakit/data/demo.yaml is the demo's config (`lorakit demo`, and `lorakit train` without a config file);
configs/demo.yaml is a byte-for-byte copy for users to read and run (tests/demo/test_settings.py keeps them equal).
Its `model.path: null` means all-MiniLM-L6-v2 (lorakit.hf.paths.default_model_path) and `data.train_file: null`
the dataset below (lorakit.train.prepare.resolve_config)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEMO_CONFIG_FILE = DATA_DIR / "demo.yaml"
DEMO_TRAIN_FILE = DATA_DIR / "demo_train.jsonl"  # 2,000 labelled sentences
DEMO_TEST_FILE = DATA_DIR / "demo_test.jsonl"  # 500 more: the validation set, and what the demo scores
DEMO_MODEL_NAME = "all-MiniLM-L6-v2"  # what model.path=null loads

DEMO_YAML = DEMO_CONFIG_FILE.read_text(encoding="utf-8")


def demo_data_files() -> tuple[str, str]:
    """The classification dataset shipped inside lorakit (train, test)."""
    return str(DEMO_TRAIN_FILE), str(DEMO_TEST_FILE)
