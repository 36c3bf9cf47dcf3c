"""lorakit.train.loss.cross_entropy_sum against F.cross_entropy(reduction="sum"): value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorakit.train import loss as loss_module
from lorakit.train.loss import cross_entropy_sum


def _both(logits: torch.Tensor, targets: torch.Tensor, upstream: float = 1.0):
    """(value, gradient) of lorakit's loss and of the reference, each from its own leaf copy of `logits`."""
    results = []
    for fn in (cross_entropy_sum, lambda z, t: F.cross_entropy(z.float(), t, ignore_index=-100, reduction="sum")):
        leaf = logits.detach().clone().requires_grad_()
        value = fn(leaf, targets)
        (value * upstream).backward()
        results.append((value.detach(), leaf.grad))
    return results


@pytest.mark.parametrize("chunk", [loss_module.CHUNK_ELEMENTS, 7 * 50])  # one chunk; many, the last one short
def test_value_and_gradient_equal_the_reference(monkeypatch, chunk):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 50, generator=gen) * 4
    targets = torch.randint(0, 50, (37,), generator=gen)
    targets[::5] = -100
    (value, grad), (ref_value, ref_grad) = _both(logits, targets, upstream=0.37)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ref_value, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert grad[::5].abs().max() == 0  # ignored rows


def test_bf16_logits_get_a_bf16_gradient_of_the_fp32_loss():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(16, 40, generator=gen) * 3).bfloat16()
    targets = torch.randint(0, 40, (16,), generator=gen)
    (value, grad), (ref_value, ref_grad) = _both(logits, targets)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(value, ref_value, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-3)


def test_ignored_rows_with_non_finite_logits_give_a_finite_loss_and_no_gradient():
    logits = torch.randn(4, 6)
    logits[1] = float("nan")
    targets = torch.tensor([2, -100, 5, 0])
    leaf = logits.clone().requires_grad_()
    value = cross_entropy_sum(leaf, targets)
    value.backward()
    kept = torch.tensor([0, 2, 3])
    torch.testing.assert_close(value, F.cross_entropy(logits[kept], targets[kept], reduction="sum"))
    assert leaf.grad[1].abs().max() == 0 and torch.isfinite(leaf.grad).all()


def test_every_row_ignored_gives_zero_and_a_zero_gradient():
    leaf = torch.randn(3, 5, requires_grad=True)
    value = cross_entropy_sum(leaf, torch.full((3,), -100))
    value.backward()
    assert value.item() == 0.0 and leaf.grad.abs().max() == 0


def test_a_retained_graph_gives_the_same_gradient_twice():
    leaf = torch.randn(6, 9, requires_grad=True)
    value = cross_entropy_sum(leaf, torch.randint(0, 9, (6,)))
    value.backward(retain_graph=True)
    first = leaf.grad.clone()
    value.backward()
    torch.testing.assert_close(leaf.grad, 2 * first)


def test_without_grad_it_is_the_reference_value():
    logits, targets = torch.randn(8, 11), torch.randint(0, 11, (8,))
    torch.testing.assert_close(cross_entropy_sum(logits, targets), F.cross_entropy(logits, targets, reduction="sum"))


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="takes \\(tokens, classes\\) logits"):
        cross_entropy_sum(torch.randn(2, 3, 4, requires_grad=True), torch.zeros(2, 3, dtype=torch.long))
