"""DoRA against its dense formula W' = m ⊙ (W + s·B·A) / ||W + s·B·A|| (row norm, detached), on every layer type."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError
from lorakit.layers.base import AdapterSpec
from lorakit.layers.conv import LoraConv
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.linear import LoraLinear
from lorakit.variants.dora import as_matrices, lowrank_norm, row_sq_norms

SPEC = AdapterSpec(r=3, lora_alpha=6, init_lora_weights=False, variant="dora")


def scramble_magnitude(layer, name="a"):
    """m != ||W + s·B·A||, so a wrong factor cannot hide behind m/n = 1."""
    with torch.no_grad():
        m = layer.lora_magnitude_vector[name].weight
        m.mul_(torch.rand_like(m) + 0.5)


def wrapped(kind: str):
    torch.manual_seed(0)
    if kind == "linear":
        return LoraLinear(nn.Linear(12, 10))
    if kind == "conv1d_hf":
        from transformers.pytorch_utils import Conv1D

        return LoraLinear(Conv1D(10, 12), fan_in_fan_out=True)  # weight (in=12, out=10)
    if kind == "embedding":
        return LoraEmbedding(nn.Embedding(20, 10))
    return LoraConv(nn.Conv2d(4, 6, 3, padding=1))


def make(kind: str, spec: AdapterSpec = SPEC):
    layer = wrapped(kind)
    layer.base_layer.requires_grad_(False)  # frozen, as add_adapter leaves it
    layer.add_adapter("a", spec)
    layer.set_active(["a"])
    scramble_magnitude(layer)
    return layer


def inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "embedding":
        return torch.randint(0, 20, (3, 5), generator=g)
    if kind == "conv2d":
        return torch.randn(2, 4, 5, 5, generator=g)
    return torch.randn(3, 5, 12, generator=g)


def dense_weight(layer, name="a") -> torch.Tensor:
    """m ⊙ V / ||V||, V = W + s·B·A in the base weight's layout, norm over everything but the output axis.

    Gradients reach A, B and m; the norm is detached (the paper's rule)."""
    v = layer.base_layer.weight.detach() + layer.delta_weight(name)
    m = layer.lora_magnitude_vector[name].weight
    vd = v.detach()
    if isinstance(layer, LoraConv):  # m is (1, out, 1, 1)
        return m.reshape(-1, 1, 1, 1) * v / vd.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    if isinstance(layer, LoraEmbedding) or layer.fan_in_fan_out:  # output axis is dim 1 of the stored weight
        return m * v / vd.norm(dim=0)
    return m[:, None] * v / vd.norm(dim=1, keepdim=True)


def dense_forward(layer, x):
    base = layer.base_layer
    w = dense_weight(layer)
    if isinstance(layer, LoraEmbedding):
        return F.embedding(x, w)
    if isinstance(layer, LoraConv):
        return F.conv2d(x, w, base.bias, padding=1)
    return F.linear(x, w.T if layer.fan_in_fan_out else w, base.bias)


KINDS = ["linear", "conv1d_hf", "embedding", "conv2d"]


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_dense_formula(kind) -> None:
    layer = make(kind)
    x = inputs(kind)
    torch.testing.assert_close(layer(x), dense_forward(layer, x))
    torch.testing.assert_close(layer.eval()(x), dense_forward(layer, x))  # eval: cached-norm path


@pytest.mark.parametrize("kind", KINDS)
def test_lowrank_norm_equals_dense_norm(kind) -> None:
    layer = make(kind)
    w, a, b = as_matrices(layer, "a")
    dense = (w + layer.scaling["a"] * b @ a).norm(dim=1)
    torch.testing.assert_close(lowrank_norm(row_sq_norms(w), w, a, b, layer.scaling["a"]), dense.detach())


def test_lowrank_norm_of_16bit_weight_is_fp32_and_close() -> None:
    torch.manual_seed(0)
    w = torch.randn(2100, 16).bfloat16()  # more rows than one chunk
    a, b = torch.randn(2, 16), torch.randn(2100, 2)
    norm = lowrank_norm(row_sq_norms(w), w, a, b, 0.5)
    assert norm.dtype == torch.float32
    # bf16 W@A^T carries ~3 significant digits
    torch.testing.assert_close(norm, (w.float() + 0.5 * b @ a).norm(dim=1), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_dense_formula_with_detached_norm(kind) -> None:
    layer = make(kind)
    reference = copy.deepcopy(layer)
    x = inputs(kind)
    out = layer(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))  # a fixed linear loss
    (out * weights).sum().backward()
    (dense_forward(reference, x) * weights).sum().backward()
    ours = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
    theirs = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert len(ours) == 3 and ours.keys() == theirs.keys()  # A, B and the magnitude
    for name, grad in ours.items():
        torch.testing.assert_close(grad, theirs[name], msg=name)


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_trainable_base_bias_gets_the_dense_gradient(kind) -> None:
    """bias="all": out = m/n ⊙ (W·x + s·B·A·x) + b, so b's gradient is the plain sum over tokens."""
    layer = make(kind)
    layer.base_layer.bias.requires_grad_(True)
    reference = copy.deepcopy(layer)
    x = inputs(kind)
    out = layer(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weights).sum().backward()
    (dense_forward(reference, x) * weights).sum().backward()
    torch.testing.assert_close(layer.base_layer.bias.grad, reference.base_layer.bias.grad)
    torch.testing.assert_close(layer.lora_magnitude_vector["a"].weight.grad,
                               reference.lora_magnitude_vector["a"].weight.grad)


def test_bf16_base_runs_the_update_in_fp32() -> None:
    layer = make("linear")
    layer.base_layer.to(torch.bfloat16)
    x = inputs("linear").bfloat16()
    out = layer(x)
    assert out.dtype == torch.bfloat16
    w = dense_weight(layer).detach()  # from the bf16 W, in fp32
    expected = F.linear(x.float(), w, layer.base_layer.bias.float())
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)  # bf16 output: ~3 significant digits


def test_dropout_in_training_recomputes_base_on_dropped_input() -> None:
    layer = make("linear", AdapterSpec(r=3, lora_alpha=6, lora_dropout=0.5, init_lora_weights=False, variant="dora"))
    x = inputs("linear")
    torch.manual_seed(5)
    out = layer.train()(x)
    torch.manual_seed(5)
    xd = F.dropout(x, 0.5, training=True)
    w, a, b = as_matrices(layer, "a")
    s = layer.scaling["a"]
    factor = layer.lora_magnitude_vector["a"].weight / (w + s * b @ a).norm(dim=1)
    want = layer.base_layer(x) + (factor - 1) * F.linear(xd, w) + factor * s * F.linear(xd, b @ a)
    torch.testing.assert_close(out, want)


def test_second_adapter_sees_base_output_only() -> None:
    """With a plain LoRA adapter before it, DoRA still scales W·x alone, not the other adapter's update."""
    layer = make("linear")
    layer.add_adapter("plain", AdapterSpec(r=2, lora_alpha=2, init_lora_weights=False))
    layer.set_active(["plain", "a"])
    x = inputs("linear")
    plain = layer.scaling["plain"] * F.linear(x, layer.lora_B["plain"].weight @ layer.lora_A["plain"].weight)
    torch.testing.assert_close(layer(x), dense_forward(layer, x) + plain)


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_adapter_is_a_no_op(kind) -> None:
    layer = wrapped(kind)
    layer.add_adapter("a", AdapterSpec(r=3, lora_alpha=6, variant="dora"))  # B = 0 (A = 0 for embeddings)
    layer.set_active(["a"])
    x = inputs(kind)
    torch.testing.assert_close(layer(x), layer.base_layer(x))


@pytest.mark.parametrize("kind", KINDS)
def test_merge_equals_unmerged_and_unmerge_restores(kind) -> None:
    layer = make(kind).eval()
    x = inputs(kind)
    before_w = layer.base_layer.weight.detach().clone()
    expected = layer(x)
    layer.merge(["a"], safe_merge=kind == "conv2d")
    torch.testing.assert_close(layer.base_layer.weight, dense_weight_unmerged_ref(layer, before_w))
    torch.testing.assert_close(layer(x), expected)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, before_w)
    torch.testing.assert_close(layer(x), expected)


def dense_weight_unmerged_ref(layer, w0):
    merged = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.base_layer.weight.copy_(w0)
        ref = dense_weight(layer)
        layer.base_layer.weight.copy_(merged)
    return ref


def test_eval_cache_follows_weight_changes() -> None:
    layer = make("linear").eval()
    x = inputs("linear")
    layer(x)
    variant = layer.lora_variant["a"]
    assert variant._norm is not None  # cached in eval
    cached = variant._norm[1]
    layer(x)
    assert variant._norm[1] is cached  # reused while nothing changed
    with torch.no_grad():
        layer.lora_B["a"].weight.mul_(2.0)  # in-place edit: the cache must notice
    torch.testing.assert_close(layer(x), dense_forward(layer, x))
    with torch.no_grad():
        layer.base_layer.weight.add_(0.1)
    torch.testing.assert_close(layer(x), dense_forward(layer, x))
    layer.train()
    assert variant._norm is None
    layer(x)
    assert variant._norm is None  # never cached while training


def test_adapter_added_and_run_under_inference_mode() -> None:
    """Inference tensors have no version counter; the norm cache must not need one (nothing is cached on them)."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    with torch.inference_mode():
        layer = LoraLinear(base).eval()
        layer.add_adapter("a", AdapterSpec(r=2, lora_alpha=4, init_lora_weights=False, variant="dora"))
        layer.set_active(["a"])
        scramble_magnitude(layer)
        x = torch.randn(3, 6)
        out = layer(x)
        torch.testing.assert_close(out, dense_forward(layer, x))
        layer.lora_B["a"].weight.mul_(2.0)  # an in-place edit of an inference tensor is still seen
        torch.testing.assert_close(layer(x), dense_forward(layer, x))


def test_magnitude_is_trainable_container_and_deleted_with_adapter() -> None:
    layer = make("linear")
    assert "lora_magnitude_vector" in layer.adapter_containers
    assert tuple(layer.lora_magnitude_vector["a"].weight.shape) == (10,)
    layer.delete_adapter("a")
    assert "a" not in layer.lora_magnitude_vector and "a" not in layer.lora_variant


def test_conv_magnitude_has_peft_shape() -> None:
    assert tuple(make("conv2d").lora_magnitude_vector["a"].weight.shape) == (1, 6, 1, 1)


def test_lora_bias_and_grouped_conv_are_refused() -> None:
    with pytest.raises(ConfigError, match="lora_bias"):
        LoraLinear(nn.Linear(4, 4)).add_adapter("a", AdapterSpec(r=2, lora_alpha=2, lora_bias=True, variant="dora"))
    layer = LoraConv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ConfigError, match="groups=2"):
        layer.add_adapter("a", AdapterSpec(r=2, lora_alpha=2, variant="dora"))
    assert layer.adapter_names == []  # refused before the layer was touched


def test_a_few_adamw_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    for p in net.parameters():
        p.requires_grad_(False)
    net[0] = LoraLinear(net[0])
    net[2] = LoraLinear(net[2])
    for layer in (net[0], net[2]):
        layer.add_adapter("a", AdapterSpec(r=4, lora_alpha=8, variant="dora"))
        layer.set_active(["a"])
    params = [p for p in net.parameters() if p.requires_grad]
    assert any(p.shape == (32,) for p in params)  # the magnitude trains
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
