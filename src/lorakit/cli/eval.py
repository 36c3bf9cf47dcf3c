"""Evaluate a model (+ adapter) on a dataset: loss and perplexity for language models, accuracy and macro-F1
(and loss) for classification.

RUN is a training output directory (its train_config.yaml rebuilds the model, its adapter is applied; for a
training.method full / probe run, its weights.safetensors) or a training config YAML (the adapter is the one in
its output.dir, when there is one). The dataset is the run's validation data unless --data names a file (same
format as the training data).

examples:
  lorakit eval runs/alpaca                                   # the run's own validation set
  lorakit eval runs/cls --data data/test.jsonl               # another file
  lorakit eval configs/seq-cls.yaml --adapter none           # the base model alone (with an untrained head)
  lorakit eval runs/alpaca --adapter runs/alpaca/best --json
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from lorakit.errors import ConfigError


def define(parser: argparse.ArgumentParser, items_nargs: str | None = "*") -> None:
    parser.add_argument("items", nargs=items_nargs, metavar="RUN [KEY=VALUE ...]",
                        help="training output directory or config YAML, then overrides (e.g. data.max_seq_len=64)")
    parser.add_argument("--adapter", help="adapter directory, or 'none' for the base model (default: the run's)")
    parser.add_argument("--data", help="evaluate on this file instead of the run's validation data")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per batch (default 16)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    define(parser, argparse.REMAINDER)  # options may follow the overrides; run() parses the rest


def run(args: argparse.Namespace) -> int:
    import torch

    import lorakit
    from lorakit.cli.train import reparse
    from lorakit.hf.models import load_model
    from lorakit.hf.paths import resolve_model_path
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.hf.tokenizer import load_tokenizer
    from lorakit.train.config import load_config
    from lorakit.train.data import build_datasets
    from lorakit.train.methods import WEIGHTS_FILE, load_weights
    from lorakit.train.prepare import resolve_config
    from lorakit.train.tasks import TASKS, evaluate

    args = reparse(args, define, "lorakit eval", __doc__)
    if not args.items:
        raise ConfigError("lorakit eval needs RUN: a training output directory or a config YAML")
    run_path, overrides = Path(args.items[0]), list(args.items[1:])
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"after RUN, expected overrides section.key=value, got {bad}")
    config_file = run_path / "train_config.yaml" if run_path.is_dir() else run_path
    if not config_file.is_file():
        raise ConfigError(f"{run_path}: expected a training output directory (with train_config.yaml) or a config YAML")
    if args.data:
        overrides += [f"data.train_file={args.data}", "data.validation_file=null", "data.validation_split=0"]
    cfg = resolve_config(load_config(config_file, overrides))
    adapter = args.adapter or (str(run_path) if run_path.is_dir() else cfg.output.dir)
    weights = cfg.training.method != "lora" and adapter != "none"  # full / probe: weights.safetensors, no adapter
    wanted = WEIGHTS_FILE if weights else "adapter_config.json"
    if adapter != "none" and not (Path(adapter) / wanted).is_file():
        what = f"{cfg.training.method} run's {WEIGHTS_FILE}" if weights else "adapter"
        raise ConfigError(f"no {what} in {adapter}; train first, pass --adapter DIR, or --adapter none")
    quiet_transformers()
    model_dir = resolve_model_path(cfg.model.path, cfg.model.revision)
    tokenizer = load_tokenizer(model_dir, cfg.model.trust_remote_code)
    train_set, val_set, stats = build_datasets(cfg.data, tokenizer)
    task = TASKS[cfg.model.task]
    examples = [task.prepare(e) for e in (train_set if args.data else val_set)]
    if not examples:
        raise ConfigError("the run has no validation data (data.validation_file / validation_split); pass --data FILE")
    torch.manual_seed(cfg.training.seed)
    model = load_model(cfg.model, model_dir, stats["labels"], tokenizer.pad_token_id)
    if weights:
        load_weights(model, Path(adapter))
    elif adapter != "none":
        lorakit.load_adapter(model, adapter)
    size = args.batch_size or 16
    batches = (task.collate(examples[i:i + size], tokenizer.pad_token_id) for i in range(0, len(examples), size))
    metrics = evaluate(model, task, batches, nullcontext)
    metrics["examples"] = len(examples)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        source = args.data or "validation data"
        print(f"lorakit eval: {source}, adapter {adapter}")
        for key, value in metrics.items():
            print(f"  {key:<11} {value:.4f}" if isinstance(value, float) else f"  {key:<11} {value}")
    return 0
