"""Sparse dropout (kernels/sparse_dropout.py): the dropped positions are a Bernoulli draw, and the layer's
fast paths with dropout equal the reference formula with the same mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorakit.kernels.sparse_dropout import SPARSE_MAX_P, dropped_positions
from tests.kernels.support import check_training, dropout_mask, make_layer, reference


# -- dropout: sampled positions, exact against the dense mask ------------------------------------------------
def test_dropped_positions_are_a_bernoulli_draw() -> None:
    n, p = 400_000, 0.05
    pos = dropped_positions(n, p)
    assert pos.dtype == torch.long and torch.all(pos[1:] > pos[:-1]) and int(pos[0]) >= 0 and int(pos[-1]) < n
    std = (n * p * (1 - p)) ** 0.5
    assert abs(pos.numel() - n * p) < 5 * std  # the count is Binomial(n, p)
    gaps = torch.diff(pos)
    assert abs((gaps == 1).double().mean().item() - p) < 5 * (p * (1 - p) / gaps.numel()) ** 0.5  # Geometric(p)
    counts = torch.bincount(pos % 10, minlength=10).double()  # no position is favoured
    assert ((counts - counts.mean()) ** 2 / counts.mean()).sum().item() < 30  # chi-square, 9 dof: p < 1e-3


def test_dropped_positions_follow_torch_seed_and_edge_rates() -> None:
    torch.manual_seed(1)
    first = dropped_positions(10_000, 0.1)
    torch.manual_seed(1)
    assert torch.equal(first, dropped_positions(10_000, 0.1))
    assert dropped_positions(100, 0.0).numel() == 0
    assert torch.equal(dropped_positions(7, 1.0), torch.arange(7))


@pytest.mark.parametrize("lead", [(1, 8), (6, 20)], ids=["factored", "merged backward"])
def test_training_with_dropout_equals_formula_with_the_same_mask(lead) -> None:
    layer = make_layer(dropout=0.05).double().train()
    x = torch.randn(*lead, 12, dtype=torch.float64)
    name = check_training(layer, x, mask=dropout_mask(x, 0.05, seed=7), seed=7)
    assert name == "FrozenLinearLoraBackward"


@pytest.mark.parametrize("lead", [(1, 9), (5, 30)], ids=["factored", "merged backward"])
def test_training_with_dropout_float32(lead) -> None:
    layer = make_layer(dropout=0.1).train()
    x = torch.randn(*lead, 12)
    assert check_training(layer, x, mask=dropout_mask(x, 0.1, seed=2), seed=2) == "FrozenLinearLoraBackward"


def test_inference_with_dropout_in_train_mode_uses_the_same_draw() -> None:
    layer = make_layer(dropout=0.05).train()
    x = torch.randn(8, 25, 12)
    torch.manual_seed(4)
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y, reference(layer, x, dropout_mask(x, 0.05, seed=4))[0])


def test_dropout_is_off_in_eval_mode() -> None:
    layer = make_layer(dropout=0.05).eval()
    assert check_training(layer, torch.randn(4, 12)) == "FrozenLinearLoraBackward"


def test_high_dropout_rate_uses_the_dense_module() -> None:
    layer = make_layer(dropout=0.5).train()
    assert SPARSE_MAX_P < 0.5
    x = torch.randn(4, 12, requires_grad=True)
    torch.manual_seed(0)
    y = layer(x)
    torch.manual_seed(0)
    mask = F.dropout(torch.ones(4, 12), 0.5, training=True)  # nn.Dropout's own draw for the same seed
    assert type(y.grad_fn).__name__ != "FrozenLinearLoraBackward"
    torch.testing.assert_close(y, reference(layer, x, mask)[0])
