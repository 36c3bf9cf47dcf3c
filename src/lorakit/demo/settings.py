"""What the demo runs, defined once: the config file, the per-method overrides listed in it, and the dataset.

src/lorakit/data/demo.yaml is the demo's config (`lorakit demo`, and `lorakit train` without a config file);
configs/demo.yaml is a byte-for-byte copy for users to read and run (tests/demo/test_settings.py keeps them equal).
Its `model.path: null` means all-MiniLM-L6-v2 (lorakit.hf.paths.default_model_path) and `data.train_file: null`
Rotten Tomatoes split by movie (lorakit.corpora; lorakit.train.prepare.resolve_config fills in the three files).

The file is the LoRA run as it stands (so `lorakit train configs/demo.yaml` trains it alone). What the probe and
full fine-tuning change is listed in its header, one line per method, as command-line overrides:

    # lorakit demo runs:
    #   probe: training.method=probe training.lr=...
    #   lora:  training.method=lora
    #   full:  training.method=full training.lr=...

They are comments, so the file stays a plain training config, and each line reads as what a user would type
after `lorakit train configs/demo.yaml` to run that method alone.
"""

from __future__ import annotations

import re
from pathlib import Path

from lorakit.corpora import rotten_tomatoes_splits
from lorakit.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEMO_CONFIG_FILE = DATA_DIR / "demo.yaml"
DEMO_MODEL_NAME = "all-MiniLM-L6-v2"  # what model.path=null loads
DEMO_DATA_NAME = "Rotten Tomatoes"  # what data.train_file=null reads

DEMO_YAML = DEMO_CONFIG_FILE.read_text(encoding="utf-8")

METHODS_HEADER = "# lorakit demo runs:"
METHOD_LINE = re.compile(r"^#\s+(?P<name>\w+):(?P<overrides>.*)$")


def demo_data_files() -> dict[str, str]:
    """The demo's dataset: {"train", "validation", "test"} -> a JSONL file of Rotten Tomatoes reviews."""
    return {name: str(path) for name, path in rotten_tomatoes_splits().items()}


def demo_methods(text: str = DEMO_YAML) -> dict[str, list[str]]:
    """method -> its overrides, in the order the demo runs them, read from the header of the demo config."""
    lines = text.splitlines()
    if METHODS_HEADER not in lines:
        raise ConfigError(f"the demo config has no {METHODS_HEADER!r} block listing the methods it runs")
    methods: dict[str, list[str]] = {}
    for line in lines[lines.index(METHODS_HEADER) + 1:]:
        found = METHOD_LINE.match(line)
        if not found:
            break
        methods[found["name"]] = found["overrides"].split()
    if not methods:
        raise ConfigError(f"the {METHODS_HEADER!r} block of the demo config lists no method")
    return methods
