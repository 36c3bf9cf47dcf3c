"""Evaluation metrics against hand computations: accuracy / macro-F1, and the token-mean loss of a padded batch
against example-by-example losses computed without padding."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from lorakit.train.tasks import TASKS, classification_metrics, evaluate
from tests.helpers import tiny_bert_seq_cls, tiny_llama


def test_accuracy_and_macro_f1_by_hand():
    predictions = torch.tensor([0, 0, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 1, 2, 2, 0])
    # class 0: tp 1, fp 1, fn 1 -> F1 2/4; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: tp 2, fp 1, fn 0 -> 4/5
    metrics = classification_metrics(predictions, labels)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)


def test_a_class_never_predicted_counts_as_f1_zero():
    metrics = classification_metrics(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]))
    assert metrics["f1"] == pytest.approx((2 * 2 / (2 * 2 + 2) + 0.0) / 2)


def padded(sequences: list[list[int]], labels: list[list[int]], pad: int = 0) -> dict[str, torch.Tensor]:
    width = max(map(len, sequences))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    return {"input_ids": ids, "attention_mask": mask, "labels": target}


def test_causal_lm_loss_is_the_mean_over_target_tokens():
    model = tiny_llama()
    sequences = [[5, 9, 17, 33, 2], [7, 12, 90], [3, 4, 5, 6, 7, 8, 9]]
    labels = [[-100, -100, 17, 33, 2], [7, 12, 90], [-100, 4, 5, 6, 7, 8, 9]]  # a prompt masked in the 1st / 3rd
    metrics = evaluate(model, TASKS["causal-lm"], [padded(sequences, labels)], nullcontext)
    total, count = 0.0, 0
    with torch.no_grad():
        for seq, lab in zip(sequences, labels, strict=True):  # one example at a time: no padding involved
            logits = model(torch.tensor([seq])).logits[0]
            for t in range(1, len(seq)):
                if lab[t] != -100:
                    total += F.cross_entropy(logits[t - 1], torch.tensor(lab[t])).item()
                    count += 1
    assert count == 3 + 2 + 6  # position 0 is never a target (nothing precedes it)
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_classification_metrics_of_evaluate_match_per_example_predictions():
    model = tiny_bert_seq_cls(num_labels=3)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0], [11, 12, 13, 0], [14, 15, 16, 17]])
    mask = (ids != 0).long()
    labels = torch.tensor([0, 1, 2, 1])
    batches = [{"input_ids": ids[:2], "attention_mask": mask[:2], "label": labels[:2]},
               {"input_ids": ids[2:], "attention_mask": mask[2:], "label": labels[2:]}]
    metrics = evaluate(model, TASKS["seq-cls"], batches, nullcontext)
    with torch.no_grad():
        logits = torch.cat([model(ids[i:i + 1, : int(mask[i].sum())]).logits for i in range(4)])
    expected = classification_metrics(logits.argmax(-1), labels)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["f1"] == pytest.approx(expected["f1"])
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
