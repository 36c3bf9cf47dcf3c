"""The embedded demo: LoRA on the real all-MiniLM-L6-v2 against a linear probe of the untouched model.

Both see the same tokenized data. The probe is given its best shot: the frozen model's mean-pooled sentence
embeddings (how the model is meant to be used), standardized, and a logistic-regression head trained to
convergence (L-BFGS). LoRA then trains rank-8 adapters on query/value plus the same kind of head, with the demo's
config (demo/settings.py: src/lorakit/data/demo.yaml, copied to configs/demo.yaml), and is scored on the same
held-out test file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel

from lorakit.demo.settings import DEMO_MODEL_NAME, DEMO_YAML
from lorakit.hf.tokenizer import load_tokenizer
from lorakit.train.config import TrainConfig, load_config
from lorakit.train.data import build_datasets, collate
from lorakit.train.prepare import resolve_config
from lorakit.train.report import human_bytes, human_time, peak_rss_mb
from lorakit.train.trainer import train


def demo_config(overrides: Sequence[str] = ()) -> TrainConfig:
    return load_config(None, list(overrides), base=DEMO_YAML)


@torch.no_grad()
def sentence_embeddings(encoder: nn.Module, examples: list, pad_id: int, batch_size: int = 128) -> torch.Tensor:
    """Mean-pooled last hidden states of the frozen encoder, (n, hidden)."""
    encoder.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_id)
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, s, 1)
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))  # (b, h)
    return torch.cat(out)


def labels_of(examples: list) -> torch.Tensor:
    return collate(examples, 0)["label"]


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
              weight_decay: float = 1e-4) -> float:
    """Logistic regression on standardized features, trained to convergence; returns test accuracy."""
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    head = nn.Linear(x_train.shape[1], int(max(y_train.max(), y_test.max())) + 1)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(x_train), y_train) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (head(x_test).argmax(-1) == y_test).float().mean().item()


def run_demo(overrides: Sequence[str] = (), say: Callable[[str], None] = print) -> dict[str, Any]:
    """Probe, then LoRA; prints the comparison and returns the numbers."""
    started, cpu_started = time.perf_counter(), time.process_time()
    cfg = demo_config(overrides)
    resolved = resolve_config(cfg)
    threads = torch.get_num_threads()
    if resolved.training.num_threads:
        torch.set_num_threads(resolved.training.num_threads)
    name = DEMO_MODEL_NAME if cfg.model.path is None else resolved.model.path
    say(f"lorakit demo: LoRA fine-tuning of {name} against a linear probe ({torch.get_num_threads()} CPU threads)")
    tokenizer = load_tokenizer(Path(resolved.model.path))
    train_set, test_set, stats = build_datasets(resolved.data, tokenizer)
    say(f"  data: {len(train_set)} train / {len(test_set)} test examples, labels {stats['labels']}")
    encoder = AutoModel.from_pretrained(resolved.model.path)
    probe_start = time.perf_counter()
    x_train = sentence_embeddings(encoder, train_set, tokenizer.pad_token_id)
    x_test = sentence_embeddings(encoder, test_set, tokenizer.pad_token_id)
    torch.manual_seed(resolved.training.seed)
    probe_acc = fit_probe(x_train, labels_of(train_set), x_test, labels_of(test_set))
    probe_s = time.perf_counter() - probe_start
    del encoder
    say(f"  linear probe (frozen model, head only): test accuracy {probe_acc:.3f} [{probe_s:.0f}s]; now LoRA ...")
    torch.set_num_threads(threads)
    result = train(cfg)
    summary = result.summary
    lora_acc = (result.final_eval or {}).get("accuracy", float("nan"))
    numbers = {
        "probe_accuracy": probe_acc, "lora_accuracy": lora_acc, "trainable_params": summary["trainable_params"],
        "total_params": summary["total_params"], "trainable_percent": summary["trainable_percent"],
        "adapter_bytes": summary["adapter_bytes"], "probe_s": probe_s, "lora_s": summary["time_s"],
        "total_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started,
        "peak_rss_mb": peak_rss_mb(), "output_dir": str(result.output_dir),
    }
    say(format_demo(numbers, resolved))
    return numbers


def format_demo(n: dict[str, Any], cfg: TrainConfig) -> str:
    lora = cfg.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else "/".join(lora.target_modules or [])
    rows = [
        ("linear probe accuracy (untouched model, trained head only)", f"{n['probe_accuracy']:.3f}"),
        (f"LoRA accuracy (r={lora.r} on {targets} + head)",
         f"{n['lora_accuracy']:.3f}  ({n['lora_accuracy'] - n['probe_accuracy']:+.3f})"),
        ("trainable parameters", f"{n['trainable_params']:,} of {n['total_params']:,} "
                                 f"({n['trainable_percent']:.2f}%)"),
        ("adapter size on disk", human_bytes(n["adapter_bytes"])),
        ("time", f"{human_time(n['total_s'])} (probe {human_time(n['probe_s'])}, LoRA training "
                 f"{human_time(n['lora_s'])}); CPU time {human_time(n['cpu_s'])}"),
        ("peak memory (RSS)", f"{n['peak_rss_mb']:.0f} MiB"),
        ("adapter written to", n["output_dir"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "lorakit demo: results\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
