"""init_lora_weights: True / False / "gaussian" / "pissa" / "pissa_niter_<k>" / "olora"."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import lorakit
from lorakit.errors import ConfigError
from lorakit.layers.base import AdapterSpec
from lorakit.layers.conv import LoraConv
from lorakit.layers.linear import LoraLinear
from tests.helpers import logits, tiny_llama, token_ids


def linear_layer(init: bool | str, r: int = 4, alpha: float = 8, base: nn.Module | None = None) -> LoraLinear:
    base = base if base is not None else nn.Linear(12, 10)
    layer = LoraLinear(base, fan_in_fan_out=isinstance(base, Conv1D))
    layer.add_adapter("a", AdapterSpec(r=r, lora_alpha=alpha, init_lora_weights=init))
    layer.set_active(["a"])
    return layer


def spectral_gap_weight(out: int = 10, inp: int = 12, seed: int = 3) -> torch.Tensor:
    """A weight whose top singular values stand well apart, so the top-r part is well defined."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, out, generator=g))
    v, _ = torch.linalg.qr(torch.randn(inp, inp, generator=g))
    s = torch.tensor([10.0, 8.0, 6.0, 5.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])[:out]
    return u @ torch.diag(s) @ v[:, :out].T  # (out, in)


@pytest.mark.parametrize("init", [True, "gaussian"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fresh_default_adapter_is_a_no_op(init: bool | str, kind: str) -> None:
    if kind == "linear":
        layer, x = linear_layer(init), torch.randn(3, 12)
    else:
        layer, x = LoraConv(nn.Conv2d(3, 5, 3)), torch.randn(2, 3, 6, 6)
        layer.add_adapter("a", AdapterSpec(r=2, lora_alpha=2, init_lora_weights=init))
        layer.set_active(["a"])
    assert torch.count_nonzero(layer.lora_B["a"].weight) == 0
    assert torch.count_nonzero(layer.lora_A["a"].weight) > 0  # A random so that B gets a gradient
    torch.testing.assert_close(layer(x), layer.base_layer(x))


def test_false_randomizes_both_factors() -> None:
    layer = linear_layer(False)
    assert torch.count_nonzero(layer.lora_B["a"].weight) == layer.lora_B["a"].weight.numel()
    x = torch.randn(3, 12)
    assert not torch.allclose(layer(x), layer.base_layer(x))


def test_gaussian_a_has_std_one_over_r() -> None:
    layer = LoraLinear(nn.Linear(4000, 10))
    layer.add_adapter("a", AdapterSpec(r=4, lora_alpha=4, init_lora_weights="gaussian"))
    std = layer.lora_A["a"].weight.std().item()
    assert std == pytest.approx(1 / 4, rel=0.05)  # 16,000 samples: the estimate is within ~1%


def pissa_case(init: str) -> tuple:
    """(W, layer made with `init` at r=4 over a base holding W, x, the base's output for x, W's exact top-4 part)."""
    w = spectral_gap_weight()
    base = nn.Linear(12, 10)
    with torch.no_grad():
        base.weight.copy_(w)
    x = torch.randn(5, 12)
    before = base(x)
    layer = linear_layer(init, r=4, alpha=8, base=base)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return w, layer, x, before, u[:, :4] @ torch.diag(s[:4]) @ vh[:4]


def test_pissa_adapter_is_top_r_svd_part_and_base_keeps_residual() -> None:
    w, layer, x, before, top = pissa_case("pissa")
    torch.testing.assert_close(layer.delta_weight("a"), top)
    torch.testing.assert_close(layer.base_layer.weight, w - top)
    torch.testing.assert_close(layer(x), before)


def test_pissa_splits_singular_values_evenly() -> None:
    base = nn.Linear(12, 10)
    with torch.no_grad():
        base.weight.copy_(spectral_gap_weight())
    layer = linear_layer("pissa", r=3, alpha=6, base=base)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    torch.testing.assert_close(a.norm(dim=1), b.norm(dim=0))


def test_pissa_niter_approximates_top_r_and_keeps_output() -> None:
    w, layer, x, before, top = pissa_case("pissa_niter_4")
    # randomized SVD: close to the exact top-4 part (the gap 5 -> 0.5 makes 4 power iterations converge well)
    torch.testing.assert_close(layer.delta_weight("a"), top, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(layer.base_layer.weight + layer.delta_weight("a"), w)
    torch.testing.assert_close(layer(x), before)


def test_olora_adapter_is_qr_part_and_base_keeps_residual() -> None:
    base = nn.Linear(12, 10)
    w = base.weight.detach().clone()
    x = torch.randn(5, 12)
    before = base(x)
    layer = linear_layer("olora", r=4, alpha=8, base=base)
    q, rr = torch.linalg.qr(w)
    part = q[:, :4] @ rr[:4]
    # PEFT's OLoRA: B = Q_r, A = R_r (unscaled), the base keeps W - s * Q_r R_r; output unchanged either way
    torch.testing.assert_close(layer.lora_B["a"].weight @ layer.lora_A["a"].weight, part)
    torch.testing.assert_close(layer.base_layer.weight, w - 2.0 * part)
    torch.testing.assert_close(layer(x), before)
    b = layer.lora_B["a"].weight
    torch.testing.assert_close(b.T @ b, torch.eye(4))  # B's columns are orthonormal


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_conv1d_hf_layout_keeps_output(init: str) -> None:
    base = Conv1D(nf=10, nx=12)
    torch.nn.init.normal_(base.weight)
    x = torch.randn(3, 12)
    before = base(x)
    layer = linear_layer(init, base=base)
    assert layer.base_layer.weight.shape == (12, 10)
    torch.testing.assert_close(layer(x), before)


def test_pissa_rank_above_weight_rank_is_refused() -> None:
    with pytest.raises(ConfigError, match="r <= min"):
        linear_layer("pissa", r=11)


def test_pissa_on_conv_is_refused() -> None:
    layer = LoraConv(nn.Conv2d(3, 5, 3))
    with pytest.raises(ConfigError, match="pissa"):
        layer.add_adapter("a", AdapterSpec(r=2, lora_alpha=2, init_lora_weights="pissa"))


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_model_output_unchanged_right_after_init(init: str) -> None:
    model = tiny_llama()
    ids = token_ids()
    before = logits(model, ids)
    w0 = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    cfg = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init)
    lorakit.add_adapter(model, cfg)
    layer = model.model.layers[0].self_attn.q_proj
    assert not torch.allclose(layer.base_layer.weight, w0)  # the base now holds the residual
    torch.testing.assert_close(logits(model, ids), before)
