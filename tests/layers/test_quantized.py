"""LoRA over bitsandbytes 4-bit / 8-bit layers against the dense formula F.linear(x, deq(W) + s·B·A, b), and the
adapter's life on a quantized base: training, gradient checkpointing, DoRA, merge, save/load across bases."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

bnb = pytest.importorskip("bitsandbytes")

import lorakit  # noqa: E402
from lorakit.layers.quantized import LoraQuantLinear, dequantize_weight  # noqa: E402
from lorakit.quantize import quantize_model  # noqa: E402
from tests.helpers import VOCAB, logits, tiny_llama, token_ids  # noqa: E402

WIDE = dict(hidden_size=64, intermediate_size=128)  # in_features multiples of the 4-bit blocksize
METHODS = ["nf4", "fp4", "int8"]


def quantized_llama(method: str = "nf4", **options) -> nn.Module:
    return quantize_model(tiny_llama(**WIDE), method, **options)


def lora(**overrides) -> lorakit.LoraConfig:
    settings = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    settings.update(overrides)
    return lorakit.LoraConfig(**settings)


def dense_reference(layer: LoraQuantLinear, x: torch.Tensor) -> torch.Tensor:
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    weight = dequantize_weight(layer.base_layer) + layer.scaling["default"] * b @ a
    return F.linear(x, weight, layer.base_layer.bias)


@pytest.mark.parametrize("method", METHODS)
def test_forward_equals_dequantized_dense_formula(method: str) -> None:
    model = lorakit.add_adapter(quantized_llama(method), lora()).train()  # int8 eval also rounds activations
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, LoraQuantLinear) and (layer.in_features, layer.out_features) == (128, 64)
    x = torch.randn(2, 5, 128)
    torch.testing.assert_close(layer(x), dense_reference(layer, x))


def test_bf16_compute_dtype_keeps_the_adapter_in_fp32() -> None:
    model = lorakit.add_adapter(quantized_llama("nf4", compute_dtype=torch.bfloat16), lora())
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.dtype == torch.float32
    x = torch.randn(3, 64)
    base = F.linear(x.bfloat16(), dequantize_weight(layer.base_layer).bfloat16()).float()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.testing.assert_close(layer(x), base + layer.scaling["default"] * x @ a.T @ b.T)


def test_disabled_adapter_gives_the_quantized_base() -> None:
    model, ids = quantized_llama(), token_ids()
    base = logits(model, ids)
    lorakit.add_adapter(model, lora())
    assert not torch.allclose(logits(model, ids), base)
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(logits(model, ids), base)


def test_fingerprint_shapes_are_the_logical_ones() -> None:
    layer = lorakit.add_adapter(quantized_llama(), lora()).model.layers[1].mlp.down_proj
    assert layer.base_shape == (64, 128)
    assert layer.base_weight.shape == (64, 128) and layer.base_weight.dtype == torch.float32


def test_count_parameters_sees_the_full_model() -> None:
    reference = lorakit.add_adapter(tiny_llama(**WIDE), lora())
    quantized = lorakit.add_adapter(quantized_llama(), lora())
    assert lorakit.count_parameters(quantized) == lorakit.count_parameters(reference)


def causal_lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, labels=ids).loss


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_training_lowers_the_loss_and_leaves_the_base_alone(method: str) -> None:
    model = lorakit.add_adapter(quantized_llama(method), lora(init_lora_weights=True)).train()
    packed = model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters() if p.requires_grad]
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    first = causal_lm_loss(model, ids).item()
    for _ in range(5):
        optimizer.zero_grad()
        causal_lm_loss(model, ids).backward()
        optimizer.step()
    assert causal_lm_loss(model, ids).item() < first - 0.05
    assert torch.equal(model.model.layers[0].self_attn.q_proj.base_layer.weight, packed)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    ids = token_ids(batch=2, seq=9)
    grads = []
    for checkpointing in (False, True):
        model = lorakit.add_adapter(quantized_llama(), lora()).train()
        if checkpointing:
            model.activation_checkpointing_enable()  # transformers 5: use_reentrant=False, input grads enabled
            assert model.model.gradient_checkpointing
        causal_lm_loss(model, ids).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 12
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name])


def test_dora_on_a_quantized_base_follows_its_formula_and_trains() -> None:
    model = lorakit.add_adapter(quantized_llama(), lora(use_dora=True)).train()
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(4, 128)
    w = dequantize_weight(layer.base_layer) + layer.delta_weight("default")  # W + s·B·A
    magnitude = layer.lora_magnitude_vector["default"].weight
    expected = F.linear(x, w) * (magnitude / w.norm(dim=1))  # m ⊙ (W + sBA)x / ||W + sBA||
    torch.testing.assert_close(layer(x), expected)
    ids = token_ids(batch=4, seq=10)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = causal_lm_loss(model, ids).item()
    for _ in range(6):
        optimizer.zero_grad()
        causal_lm_loss(model, ids).backward()
        optimizer.step()
    assert causal_lm_loss(model, ids).item() < first


def nf4_roundtrip(weight: torch.Tensor) -> torch.Tensor:
    """deq(Q(W)) through an independent layer: quantize_model on a fresh nn.Linear holding W."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return dequantize_weight(quantize_model(nn.Sequential(linear), "nf4")[0])


def test_merge_is_the_requantized_dense_merge() -> None:
    model = lorakit.add_adapter(quantized_llama(), lora())
    layer = model.model.layers[0].self_attn.q_proj
    expected = nf4_roundtrip(layer.base_weight + layer.delta_weight("default"))
    lorakit.merge_adapter(model)
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit) and layer.merged_adapters == ["default"]
    torch.testing.assert_close(layer.base_weight, expected)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), F.linear(x, expected))  # merged: the adapter is not added again


def test_layers_with_nothing_to_merge_keep_their_packed_bytes() -> None:
    model = lorakit.add_adapter(quantized_llama(), lora(target_modules=["q_proj"]), adapter_name="a")
    lorakit.add_adapter(model, lora(target_modules=["v_proj"]), adapter_name="b")
    q_proj = model.model.layers[0].self_attn.q_proj.base_layer
    packed, absmax = q_proj.weight.detach().clone(), q_proj.weight.quant_state.absmax.clone()
    lorakit.merge_adapter(model, ["b"])
    lorakit.unmerge_adapter(model)
    assert torch.equal(q_proj.weight, packed) and torch.equal(q_proj.weight.quant_state.absmax, absmax)


def test_dora_merge_is_the_requantized_dora_weight() -> None:
    model = lorakit.add_adapter(quantized_llama(), lora(use_dora=True))
    layer = model.model.layers[0].mlp.down_proj
    w = layer.base_weight + layer.delta_weight("default")
    magnitude = layer.lora_magnitude_vector["default"].weight.detach()
    expected = nf4_roundtrip(w * (magnitude / w.norm(dim=1))[:, None])
    x = torch.randn(3, 128)
    with torch.no_grad():
        before = layer(x)
        lorakit.merge_adapter(model)
        after = layer(x)
    # the norm is computed another way inside DoRA: a rare element may round across a level boundary
    assert ((layer.base_weight - expected).abs() > 1e-6).float().mean() < 0.01
    assert (after - before).abs().max() < 0.1 * before.abs().max()  # only requantization error


def test_dora_after_merge_and_unmerge_uses_the_requantized_weight() -> None:
    model = lorakit.add_adapter(quantized_llama(), lora(use_dora=True, target_modules=["down_proj"]))
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(4, 128)
    with torch.no_grad():
        layer(x)  # fills DoRA's cached row norms of W
        lorakit.merge_adapter(model)
        lorakit.unmerge_adapter(model)  # W is now deq(Q(...)): cached norms of the old W would be stale
        w = layer.base_weight + layer.delta_weight("default")
        magnitude = layer.lora_magnitude_vector["default"].weight
        torch.testing.assert_close(layer(x), F.linear(x, w) * (magnitude / w.norm(dim=1)))


def test_unmerge_subtracts_and_requantizes_again() -> None:
    model = lorakit.add_adapter(quantized_llama(), lora())
    layer = model.model.layers[0].self_attn.q_proj
    original, delta = layer.base_weight, layer.delta_weight("default").detach()
    lorakit.merge_adapter(model)
    lorakit.unmerge_adapter(model)
    assert layer.merged_adapters == []
    # two requantizations, so not the original W: deq(Q(deq(Q(W + Δ)) - Δ)), computed independently
    torch.testing.assert_close(layer.base_weight, nf4_roundtrip(nf4_roundtrip(original + delta) - delta))


def test_pissa_init_on_a_quantized_base_starts_at_the_base() -> None:
    model = quantized_llama()
    original = dequantize_weight(model.model.layers[0].self_attn.q_proj)
    lorakit.add_adapter(model, lora(init_lora_weights="pissa"))
    layer = model.model.layers[0].self_attn.q_proj
    rebuilt = layer.base_weight + layer.delta_weight("default")  # requantized residual + principal part
    assert (rebuilt - original).abs().max() < 0.5 * (original.abs().max())
    assert (layer.base_weight - original).abs().max() > 1e-3  # the residual really was written back


@pytest.mark.parametrize("direction", ["quantized->full", "full->quantized"])
def test_adapter_files_move_between_quantized_and_full_precision_bases(tmp_path, direction: str) -> None:
    full, quantized = tiny_llama(**WIDE), quantized_llama()
    source, target = (quantized, full) if direction == "quantized->full" else (full, quantized)
    lorakit.add_adapter(source, lora(target_modules="all-linear"))
    lorakit.save_adapter(source, tmp_path)
    lorakit.load_adapter(target, tmp_path)  # the fingerprint check passes: same logical shapes
    saved = lorakit.adapter_state_dict(source)
    assert saved.keys() == lorakit.adapter_state_dict(target).keys()
    for key, tensor in lorakit.adapter_state_dict(target).items():
        torch.testing.assert_close(tensor, saved[key])
    ids = token_ids()
    error = (logits(target, ids) - logits(source, ids)).abs().max()
    assert error < 0.25 * logits(source, ids).abs().max()  # only the base's quantization error


@pytest.mark.parametrize("kwargs", [dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"), dict(load_in_8bit=True)])
def test_model_loaded_by_transformers_in_4_or_8_bit(tmp_path, kwargs) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama(**WIDE).save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=BitsAndBytesConfig(**kwargs), device_map="cpu"
    )
    lorakit.add_adapter(model, lora(target_modules="all-linear"))
    layer = model.model.layers[1].self_attn.v_proj
    assert isinstance(layer, LoraQuantLinear)
    x = torch.randn(4, 64)
    torch.testing.assert_close(layer.train()(x), dense_reference(layer, x))
    lorakit.save_adapter(model, tmp_path / "adapter")
    full = lorakit.load_adapter(tiny_llama(**WIDE), tmp_path / "adapter")
    torch.testing.assert_close(lorakit.adapter_state_dict(full), lorakit.adapter_state_dict(model))
