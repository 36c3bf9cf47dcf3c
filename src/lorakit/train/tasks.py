"""Per-task losses and evaluation metrics. Losses are SUMS over their units (target tokens, or examples):
the trainer divides by the units of the whole optimizer step, so the gradient is that of the mean loss over the
global batch however it is split into micro-batches and processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError
from lorakit.train.data import collate as collate_batch
from lorakit.train.head import target_logits
from lorakit.train.loss import cross_entropy_sum

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


def _tokens_of(example: Any, key: str) -> list[int]:
    return list(example[key]) if isinstance(example, dict) else list(getattr(example, key))


class Task:
    """One training objective: its loss, its loss units, its metrics."""

    name = ""
    classification = False

    def prepare(self, example: dict) -> dict:
        """An example of the data pipeline in the form this task trains on (most tasks take it as it is)."""
        return example

    def collate(self, examples: list[dict], pad_token_id: int | None) -> dict[str, torch.Tensor]:
        return collate_batch(examples, pad_token_id)

    def loss_units(self, example: Any) -> int:
        raise NotImplementedError

    def logits_and_targets(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        raise NotImplementedError

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, targets = self.logits_and_targets(model, batch)
        return cross_entropy_sum(logits, targets, ignore_index=IGNORE)

    def check_packing(self, model: nn.Module) -> None:
        """Raise ConfigError unless this task can train `model` on packed blocks (data.packing=true)."""
        raise ConfigError(f"data.packing=true applies to model.task=causal-lm, not {self.name}; set data.packing=false")


class CausalLM(Task):
    """Next-token prediction; position t predicts token t+1; labels IGNORE (prompt, padding) carry no loss. A packed
    batch (with "position_ids") holds several examples per row, each with its own loss (train/packing.py)."""

    name = "causal-lm"

    def loss_units(self, example: Any) -> int:
        return sum(1 for t in _tokens_of(example, "labels")[1:] if t != IGNORE)

    def model_inputs(self, model, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The forward's keyword arguments and the targets of its output positions, (rows, seq)."""
        # targets shifted left, the last position ignored: the logits are used as they are, never copied
        targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # (b, s)
        if "position_ids" not in batch:
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, targets
        if not flattens_packed_rows(model):
            # packed blocks (train/packing.py): no attention_mask and no cache, so that transformers reads the
            # position restarts as example boundaries and masks attention across them; padding is on the right,
            # never attended by real tokens, and its labels are IGNORE
            return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}, targets
        # flash attention finds the restarts in one row only: the real tokens of every block in one row; each
        # block's last target is IGNORE, so nothing crosses from one to the next
        keep = batch["attention_mask"].bool()
        return ({"input_ids": batch["input_ids"][keep][None], "position_ids": batch["position_ids"][keep][None],
                 "use_cache": False}, targets[keep][None])  # (1, real tokens)

    def logits_and_targets(self, model, batch):
        inputs, targets = self.model_inputs(model, batch)
        logits = model(**inputs).logits
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # (tokens, V), (tokens,)

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The summed loss, with the LM head run only on the positions that have a target (train/head.py)."""
        if type(self).logits_and_targets is not CausalLM.logits_and_targets:  # a subclass's own forward wins
            return super().loss_sum(model, batch)
        inputs, targets = self.model_inputs(model, batch)
        keep = targets != IGNORE
        logits = target_logits(model, inputs, keep)  # (targets, V)
        if logits is None:
            return super().loss_sum(model, batch)
        return cross_entropy_sum(logits, targets[keep], ignore_index=IGNORE)

    def check_packing(self, model: nn.Module) -> None:
        """Refuse data.packing=true for a model that lets the examples of a block see each other: one whose
        attention ignores the position restarts (ALiBi models such as Bloom, custom attention) or that carries a
        state along the sequence (Mamba). The probe: the same example after two different ones in a block must
        get the same logits."""
        device = next(model.parameters()).device
        probe = [9, 10, 11]
        ids = torch.tensor([[1, 2, 3, 4, *probe], [5, 6, 7, 8, *probe]], device=device)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, IGNORE),
                 "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2]] * 2, device=device)}
        was_training = model.training
        model.eval()  # no dropout
        try:
            with torch.no_grad():
                logits = self.logits_and_targets(model, batch)[0].float().view(2, 7, -1)[:, 4:]  # (2, probe, V)
        except TypeError as exc:  # a forward without position_ids / use_cache (custom code)
            raise ConfigError(f"data.packing=true needs a model that takes position_ids; {type(model).__name__} "
                              f"does not ({exc}); set data.packing=false") from None
        finally:
            model.train(was_training)
        gap = (logits[0] - logits[1]).abs().max().item()
        if not gap <= 1e-5 * (1.0 + logits.abs().max().item()):  # isolated: the same numbers (masked keys add 0)
            raise ConfigError(f"data.packing=true: {type(model).__name__} lets the examples packed in a block see "
                              f"each other (an example's logits moved by {gap:.2g} when the one before it changed); "
                              "set data.packing=false")


def flattens_packed_rows(model: nn.Module) -> bool:
    """Whether packed blocks go to `model` as one row: flash attention reads the position restarts only when the
    batch is a single row (transformers' _is_packed_sequence); sdpa and eager read them in every row, and one long
    row would make their attention quadratic in the whole batch's length."""
    config = getattr(getattr(model, "module", model), "config", None)  # DDP / FSDP wrap the model in .module
    return "flash" in str(getattr(config, "_attn_implementation", None) or "")


class Seq2Seq(Task):
    """Encoder-decoder: the untrained tokens (prompt) are the encoder input, the trained ones (response) the
    decoder's labels; the model shifts `labels` into decoder inputs itself; every non-IGNORE label counts."""

    name = "seq2seq"

    def prepare(self, example: dict) -> dict:
        source = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label == IGNORE]
        target = [label for label in example["labels"] if label != IGNORE]
        if not source:
            raise ConfigError("model.task='seq2seq' needs examples with a prompt and a response (data.format alpaca, "
                              "prompt_completion or chat); this data trains on every token")
        return {"input_ids": source, "attention_mask": [1] * len(source), "labels": target}

    def collate(self, examples: list[dict], pad_token_id: int | None) -> dict[str, torch.Tensor]:
        inputs = collate_batch([{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in examples],
                         pad_token_id)
        width = max(len(e["labels"]) for e in examples)
        inputs["labels"] = torch.tensor([list(e["labels"]) + [IGNORE] * (width - len(e["labels"])) for e in examples])
        return inputs

    def loss_units(self, example: Any) -> int:
        return sum(1 for t in _tokens_of(example, "labels") if t != IGNORE)

    def logits_and_targets(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"]).logits  # (b, target_len, V)
        return logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1)


class SequenceClassification(Task):
    name = "seq-cls"
    classification = True

    def loss_units(self, example: Any) -> int:
        return 1

    def logits_and_targets(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (b, classes)
        return logits, batch["label"]


TASKS: dict[str, Task] = {t.name: t for t in (CausalLM(), Seq2Seq(), SequenceClassification())}


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean of per-class F1 over classes seen in labels or predictions)."""
    predictions, labels = predictions.view(-1).long(), labels.view(-1).long()
    accuracy = (predictions == labels).float().mean().item() if len(labels) else float("nan")
    scores = []
    for cls in torch.unique(torch.cat([predictions, labels])).tolist():
        tp = ((predictions == cls) & (labels == cls)).sum().item()
        fp = ((predictions == cls) & (labels != cls)).sum().item()
        fn = ((predictions != cls) & (labels == cls)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": accuracy, "f1": sum(scores) / len(scores) if scores else float("nan")}


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batches: Iterable[dict[str, torch.Tensor]],
             autocast: Callable[[], Any]) -> dict[str, float]:
    """Mean loss over the task's units (+ perplexity for LMs, accuracy / macro-F1 for classification)."""
    was_training = model.training
    model.eval()
    loss_sum, units = 0.0, 0
    predictions, labels = [], []
    try:
        for batch in batches:
            with autocast():
                logits, targets = task.logits_and_targets(model, batch)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum").item()
            units += int((targets != IGNORE).sum())
            if task.classification:
                predictions.append(logits.argmax(-1).cpu())
                labels.append(targets.cpu())
    finally:
        model.train(was_training)
    loss = loss_sum / max(units, 1)
    metrics = {"loss": loss}
    if task.classification:
        metrics.update(classification_metrics(torch.cat(predictions), torch.cat(labels)))
    else:
        metrics["perplexity"] = math.exp(min(loss, 50.0))  # capped: exp of a diverged loss is just inf
    return metrics
