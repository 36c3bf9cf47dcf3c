"""LoraConv (Conv1d/2d/3d) against F.convNd with the weight W + delta, delta[o, i, k] = s * sum_r B[o, r] A[r, i, k]."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorakit
from lorakit.errors import ConfigError, MergeError
from lorakit.layers.base import AdapterSpec
from lorakit.layers.conv import LoraConv
from tests.helpers import TinyConvNet, conv_input

CONV = {1: (nn.Conv1d, F.conv1d), 2: (nn.Conv2d, F.conv2d), 3: (nn.Conv3d, F.conv3d)}
GEOMETRIES = [  # (stride, padding, dilation)
    (1, 0, 1),
    (2, 1, 1),
    (1, 2, 2),
]


def make_layer(dims: int, stride=1, padding=0, dilation=1, groups=1, r=4, **spec) -> LoraConv:
    conv_type, _ = CONV[dims]
    base = conv_type(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    layer = LoraConv(base)
    layer.add_adapter("a", AdapterSpec(r=r, lora_alpha=8, init_lora_weights=False, **spec))
    layer.set_active(["a"])
    return layer


def dense_delta(layer: LoraConv, name: str = "a") -> torch.Tensor:
    """The update as one ungrouped conv weight (out, in, *k), built from A and B by einsum."""
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight  # a: (r, in, *k), b: (out, r / groups, 1...)
    groups = layer.base_layer.groups
    out, r_per_group = b.shape[0], b.shape[1]
    b2 = torch.zeros(out, a.shape[0])  # block-diagonal (out, r): output o reads the ranks of its group
    for o in range(out):
        g = o // (out // groups)
        b2[o, g * r_per_group:(g + 1) * r_per_group] = b[o].flatten()
    return layer.scaling[name] * torch.einsum("or,ri...->oi...", b2, a)


def reference(layer: LoraConv, x: torch.Tensor) -> torch.Tensor:
    base = layer.base_layer
    conv = CONV[x.dim() - 2][1]
    y = conv(x, base.weight, base.bias, base.stride, base.padding, base.dilation, base.groups)
    return y + conv(x, dense_delta(layer), None, base.stride, base.padding, base.dilation)


def sample(dims: int) -> torch.Tensor:
    return torch.randn(2, 4, *([9] * dims))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(("stride", "padding", "dilation"), GEOMETRIES)
def test_forward_equals_dense_conv(dims: int, stride: int, padding: int, dilation: int) -> None:
    layer = make_layer(dims, stride, padding, dilation)
    x = sample(dims)
    torch.testing.assert_close(layer(x), reference(layer, x))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_delta_weight_equals_dense_delta(dims: int) -> None:
    layer = make_layer(dims)
    delta = layer.delta_weight("a")
    assert delta.shape == layer.base_layer.weight.shape
    torch.testing.assert_close(delta, dense_delta(layer))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_merge_gives_same_output_and_unmerge_restores(dims: int) -> None:
    layer = make_layer(dims, stride=2, padding=1)
    w0 = layer.base_layer.weight.detach().clone()
    x = sample(dims)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0)


@pytest.mark.parametrize("dims", [1, 2])
def test_grouped_conv_forward_equals_dense_reference(dims: int) -> None:
    layer = make_layer(dims, padding=1, groups=2)
    x = sample(dims)
    torch.testing.assert_close(layer(x), reference(layer, x))


def test_merging_grouped_conv_raises_and_leaves_weight_untouched() -> None:
    layer = make_layer(2, groups=2)
    w0 = layer.base_layer.weight.detach().clone()
    with pytest.raises(MergeError, match="groups=2"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, w0)
    assert layer.merged_adapters == []


def test_grouped_conv_rank_must_divide_by_groups() -> None:
    with pytest.raises(ConfigError, match="groups=2"):
        make_layer(2, groups=2, r=3)


def test_lora_bias_adds_scaled_bias_and_merges() -> None:
    layer = make_layer(2, lora_bias=True)
    with torch.no_grad():
        layer.lora_B["a"].bias.normal_()
    x = sample(2)
    expected = reference(layer, x) + layer.scaling["a"] * layer.lora_B["a"].bias[:, None, None]
    torch.testing.assert_close(layer(x), expected)
    layer.merge()
    torch.testing.assert_close(layer(x), expected)


def test_padding_mode_circular_merges_exactly() -> None:
    base = nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular")
    layer = LoraConv(base)
    layer.add_adapter("a", AdapterSpec(r=2, lora_alpha=2, init_lora_weights=False))
    layer.set_active(["a"])
    x = sample(2)
    padded = F.pad(x, (1, 1, 1, 1), mode="circular")
    expected = F.conv2d(padded, base.weight + dense_delta(layer), base.bias)
    torch.testing.assert_close(layer(x), expected)


def test_dropout_eval_is_identity_and_train_differs() -> None:
    layer = make_layer(2, lora_dropout=0.5)
    x = sample(2)
    torch.testing.assert_close(layer.eval()(x), reference(layer, x))
    assert not torch.allclose(layer.train()(x), reference(layer, x))


def test_every_conv_of_a_model_adapts_and_merges() -> None:
    model = TinyConvNet().eval()
    x = conv_input()
    base = model(x)
    targets = ["conv", "conv3d", "conv1d"]
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    adapted = model(x)
    assert not torch.allclose(adapted, base)
    lorakit.merge_adapter(model)
    torch.testing.assert_close(model(x), adapted)
    lorakit.unmerge_adapter(model)
    torch.testing.assert_close(model(x), adapted)
