"""Every fast path of LoraLinear.forward (layers/fast_linear.py, lora_autograd.py) against the plain formula
y = x W^T + b + sum_a s_a (x A_a^T) B_a^T, computed here from the weights with ordinary autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorakit
from lorakit.layers import linear as linear_module
from lorakit.layers.base import AdapterSpec
from lorakit.layers.fast_linear import merge_on_the_fly
from lorakit.layers.linear import LoraLinear
from lorakit.layers.sparse_dropout import SPARSE_MAX_P, dropped_positions
from tests.helpers import tiny_llama, token_ids

# Leading shapes for the 12 -> 10 layers below: FEW tokens take the factored products, MANY the per-call
# merged weight W + s B A (fast_linear.merge_on_the_fly); every path is tested on both.
FEW, MANY = (2, 3), (4, 8)
PATHS = pytest.mark.parametrize("lead", [FEW, MANY], ids=["factored", "merged"])


def test_the_two_sizes_take_the_two_paths() -> None:
    assert not merge_on_the_fly(2 * 3, 12, 10)
    assert merge_on_the_fly(4 * 8, 12, 10)
    assert merge_on_the_fly(1024, 512, 512) and not merge_on_the_fly(8, 512, 512)  # prefill vs decode


def make_layer(*specs: tuple[str, int], dtype=torch.float32, bias: bool = True, dropout: float = 0.0,
               lora_bias: bool = False) -> LoraLinear:
    layer = LoraLinear(nn.Linear(12, 10, bias=bias).to(dtype))
    for name, r in specs or (("a", 4),):
        layer.add_adapter(name, AdapterSpec(r=r, lora_alpha=2 * r + 1, lora_dropout=dropout, init_lora_weights=False,
                                            lora_bias=lora_bias))
    layer.set_active([name for name, _ in specs or (("a", 4),)])
    for p in layer.base_layer.parameters():
        p.requires_grad_(False)
    return layer


def reference(layer: LoraLinear, x: torch.Tensor, mask: torch.Tensor | None = None):
    """The plain formula on detached copies: (output, leaf tensors {x, A_name, B_name, ...})."""
    leaves = {"x": x.detach().clone().requires_grad_(True)}
    base = F.linear(leaves["x"], layer.base_layer.weight, layer.base_layer.bias)
    y = base
    for name in layer.active_adapters:  # over a 16-bit base: the fp32 updates summed, then rounded once
        a = leaves[f"A_{name}"] = layer.lora_A[name].weight.detach().clone().requires_grad_(True)
        b = leaves[f"B_{name}"] = layer.lora_B[name].weight.detach().clone().requires_grad_(True)
        xd = leaves["x"].to(a.dtype) * (mask if mask is not None else 1.0)
        update = F.linear(F.linear(xd, a), b, layer.lora_B[name].bias) * layer.scaling[name]
        y = y.to(update.dtype) + update
    return y.to(base.dtype), leaves


def grads(layer: LoraLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"x": x.grad}
    for name in layer.active_adapters:
        out[f"A_{name}"], out[f"B_{name}"] = layer.lora_A[name].weight.grad, layer.lora_B[name].weight.grad
    return out


def check_training(layer: LoraLinear, x: torch.Tensor, mask: torch.Tensor | None = None, seed: int = 3) -> str:
    """Forward and every gradient equal the plain formula; returns the name of the autograd node used."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = layer(x)
    want, leaves = reference(layer, x, mask)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    y.backward(g)
    want.backward(g)
    got = grads(layer, x)
    for key, leaf in leaves.items():
        torch.testing.assert_close(got[key], leaf.grad, msg=lambda m, key=key: f"grad of {key}: {m}")
    return type(y.grad_fn).__name__


def dropout_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The draw the layer makes right after torch.manual_seed(seed), as nn.Dropout's dense multiplier."""
    torch.manual_seed(seed)
    mask = torch.full((x.numel(),), 1.0 / (1.0 - p), dtype=x.dtype)
    mask[dropped_positions(x.numel(), p)] = 0.0
    return mask.view(x.shape)


# -- inference: in-place fused multiply-add into the base output -----------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 12), (6, 12), (12,), (32, 12)])
def test_inference_path_equals_formula(shape) -> None:
    layer = make_layer()
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(layer, x)[0])


@PATHS
def test_inference_path_with_two_adapters_of_different_ranks_and_lora_bias(lead) -> None:
    layer = make_layer(("a", 4), ("b", 2), lora_bias=True)
    for name in ("a", "b"):
        nn.init.normal_(layer.lora_B[name].bias)
    x = torch.randn(*lead, 12)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), reference(layer, x)[0])


@PATHS
def test_inference_path_on_bf16_base_rounds_once(lead) -> None:
    layer = make_layer(("a", 4), ("b", 2), dtype=torch.bfloat16)  # fp32 adapters: updates summed in fp32
    x = torch.randn(*lead, 12, dtype=torch.bfloat16)  # never merged: that would round the adapter into bf16
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, reference(layer, x)[0])


@PATHS
def test_inference_path_leaves_weights_and_input_untouched(lead) -> None:
    layer = make_layer(("a", 4), ("b", 3))
    x = torch.randn(*lead, 12)
    before = [t.clone() for t in (x, *layer.parameters())]
    with torch.no_grad():
        layer(x)
    for now, then in zip((x, *layer.parameters()), before, strict=True):
        assert torch.equal(now, then)


def test_inference_path_respects_base_hooks() -> None:
    layer = make_layer()
    x = torch.randn(5, 12)
    seen = []
    layer.base_layer.register_forward_hook(lambda module, inputs, out: seen.append(out))
    with torch.no_grad():
        y = layer(x)
    assert len(seen) == 1  # the hooked base ran as a module (plain path), and its output was not modified in place
    torch.testing.assert_close(seen[0], F.linear(x, layer.base_layer.weight, layer.base_layer.bias))
    torch.testing.assert_close(y, reference(layer, x)[0])


# -- training: one custom autograd node over a frozen nn.Linear -----------------------------------------------
@PATHS
def test_training_path_forward_and_gradients_equal_formula(lead) -> None:
    assert check_training(make_layer(), torch.randn(*lead, 12)) == "FrozenLinearLoraBackward"


@PATHS
def test_training_path_float64_and_without_bias(lead) -> None:
    layer = make_layer(bias=False).double()
    assert check_training(layer, torch.randn(*lead, 12, dtype=torch.float64)) == "FrozenLinearLoraBackward"


@PATHS
def test_training_path_when_only_the_adapter_needs_grad(lead) -> None:
    layer = make_layer()
    x = torch.randn(*lead, 12)  # no grad for x: the node skips the input gradient
    y = layer(x)
    want, leaves = reference(layer, x)
    y.sum().backward()
    want.sum().backward()
    assert type(y.grad_fn).__name__ == "FrozenLinearLoraBackward"
    torch.testing.assert_close(layer.lora_A["a"].weight.grad, leaves["A_a"].grad)
    torch.testing.assert_close(layer.lora_B["a"].weight.grad, leaves["B_a"].grad)


def test_training_a_trainable_base_falls_back_to_plain_autograd() -> None:
    layer = make_layer()
    layer.base_layer.weight.requires_grad_(True)
    x = torch.randn(3, 12, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ != "FrozenLinearLoraBackward"
    y.sum().backward()
    torch.testing.assert_close(layer.base_layer.weight.grad, torch.ones(3, 10).T @ x.detach())


def test_training_two_live_adapters_falls_back_and_is_exact() -> None:
    layer = make_layer(("a", 4), ("b", 3))
    assert check_training(layer, torch.randn(2, 3, 12)) != "FrozenLinearLoraBackward"


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


# -- the layer's other routes stay as they were ------------------------------------------------------------------
def test_mixed_rows_hook_still_replaces_the_adapter_loop() -> None:
    layer = make_layer()

    class Hook:
        def apply(self, lay, x, y):
            return y * 0 + 7.0

    layer.mixed_rows = Hook()
    torch.testing.assert_close(layer(torch.randn(2, 12)), torch.full((2, 10), 7.0))


def test_model_fast_paths_match_plain_paths(monkeypatch) -> None:
    """A tiny Llama, all linear layers adapted: logits and every gradient equal with the fast paths switched off."""
    ids = token_ids()
    results = []
    for fast in (True, False):
        model = tiny_llama()
        torch.manual_seed(0)
        lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        if not fast:
            monkeypatch.setattr(linear_module, "fast_forward", lambda layer, x: None)
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss_fast, grads_fast), (loss_plain, grads_plain) = results
    torch.testing.assert_close(loss_fast, loss_plain)
    assert grads_fast.keys() == grads_plain.keys() and len(grads_fast) == 2 * 7 * 2
    for key in grads_fast:
        torch.testing.assert_close(grads_fast[key], grads_plain[key], msg=lambda m, key=key: f"{key}: {m}")


def test_16_bit_adapters_over_a_16_bit_base_are_never_merged_per_call() -> None:
    """W + s B A rounded to bf16 loses the update here, the base output plus the update does not.
    W holds 256 in columns 0 and 1 and x = (1, -1, 0, ...): the base output is exactly 0; the update
    0.875 * (1 + 1) = 1.75 is exact in bf16, but 256 + 0.875 rounds to 256 and 256 - 0.875 to 255 (giving 1)."""
    layer = LoraLinear(nn.Linear(12, 10, bias=False).to(torch.bfloat16))
    layer.add_adapter("a", AdapterSpec(r=1, lora_alpha=1, init_lora_weights=False))
    layer.set_active(["a"])
    layer.cast_adapter_to_base_dtype("a")
    layer.base_layer.weight.requires_grad_(False)
    with torch.no_grad():
        layer.base_layer.weight.zero_()[:, :2] = 256
        layer.lora_A["a"].weight.zero_()[0, :2] = torch.tensor([1.0, -1.0])
        layer.lora_B["a"].weight.fill_(0.875)
    x = torch.zeros(*MANY, 12, dtype=torch.bfloat16)
    x[..., 0], x[..., 1] = 1, -1
    assert merge_on_the_fly(x.numel() // 12, 12, 10)  # a 32-bit layer would merge at this size
    with torch.no_grad():
        assert (layer(x) == 1.75).all()
    y = layer(x)  # the training path
    assert y.grad_fn is not None and (y == 1.75).all()
