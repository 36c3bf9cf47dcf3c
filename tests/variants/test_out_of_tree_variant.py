"""A variant registered from outside src/ works end to end through the registry alone.

The toy "scaled LoRA": y = base(x) + s · v ⊙ (B·A·x), with v (out,) a trainable per-output vector saved under
its own file key `lora_scale_vector`, selected by its own peft_type. Nothing in lorakit knows it: injection,
training, save / load, merge and mixed-adapter batches find it through lorakit.variants.registry.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lorakit
from lorakit.layers.base import LoraLayer
from lorakit.layers.linear import LoraLinear
from lorakit.mixed import use_plan
from lorakit.serve.cache import AdapterCache
from lorakit.variants.registry import Variant, register_variant, unregister_variant
from tests.helpers import logits, tiny_llama, token_ids
from tests.variants.loop import train_steps

ROLE = "lora_scale_vector"
TARGETS = ["q_proj", "v_proj"]


@dataclass
class ScaledLoraConfig(lorakit.LoraConfig):
    PEFT_TYPE: ClassVar[str] = "SCALED_LORA"
    peft_type: str = "SCALED_LORA"
    vector_spread: float = 0.5  # v starts at 1 + spread · N(0, 1), so a wrong v cannot hide behind v = 1


class ScaleVector(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(value)


class ScaledLora(nn.Module):
    """The per-adapter module: the update s · v ⊙ (B·A·x) on top of the base output."""

    def __init__(self, spread: float) -> None:
        super().__init__()
        self.spread = spread

    def attach(self, layer: LoraLinear, name: str) -> None:
        if not hasattr(layer, ROLE):
            layer.lora_scale_vector = nn.ModuleDict()
            layer.adapter_containers = (*layer.adapter_containers, ROLE)
        out = layer.lora_B[name].weight.shape[0]
        layer.lora_scale_vector[name] = ScaleVector(1 + self.spread * torch.randn(out))

    def vector(self, layer: LoraLinear, name: str) -> torch.Tensor:
        return layer.lora_scale_vector[name].weight

    def forward(self, layer: LoraLinear, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        update = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](x.to(layer.lora_A[name].weight.dtype))))
        return y + (update * self.vector(layer, name) * layer.scaling[name]).to(y.dtype)

    def delta(self, layer: LoraLinear, name: str) -> torch.Tensor:
        b, a = layer.lora_B[name].weight, layer.lora_A[name].weight
        return (self.vector(layer, name)[:, None] * b @ a) * layer.scaling[name]

    def merge(self, layer: LoraLinear, name: str, safe_merge: bool) -> None:
        with torch.no_grad():
            layer.base_weight.add_(self.delta(layer, name).to(layer.base_weight.dtype))

    def unmerge(self, layer: LoraLinear, name: str) -> None:
        with torch.no_grad():
            layer.base_weight.sub_(self.delta(layer, name).to(layer.base_weight.dtype))

    def fold(self, layer: LoraLinear, name: str) -> tuple[torch.Tensor, bool]:
        return self.vector(layer, name), False  # v scales the update only, not W·x


def make_scaled(layer: LoraLayer, spec) -> ScaledLora:
    if not isinstance(layer, LoraLinear):
        raise lorakit.ConfigError(f"scaled LoRA works on linear layers, not {type(layer).__name__}")
    return ScaledLora(spread=0.5)


def _row_factor(parts, a, b, matrix, scale):
    return parts[ROLE + ".weight"].reshape(-1).to(a.device, a.dtype), False


SCALED = Variant(
    name="scaled_lora", title="scaled LoRA", peft_type="SCALED_LORA", config_class=ScaledLoraConfig,
    make_layer=make_scaled, file_roles=(ROLE,), read_config=lambda raw, name: ScaledLoraConfig.from_peft_dict(raw),
    row_factor=_row_factor,
)


@pytest.fixture(autouse=True)
def registered():
    register_variant(SCALED)
    yield
    unregister_variant(SCALED.name)


def scaled_model(name: str = "default", seed: int = 0) -> nn.Module:
    model = tiny_llama()
    torch.manual_seed(seed)
    lorakit.add_adapter(model, ScaledLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                init_lora_weights=False), name)
    return model


def dense(layer: LoraLinear, name: str, x: torch.Tensor) -> torch.Tensor:
    """x @ (W + s · diag(v) · B · A)^T + bias, written out from the raw tensors."""
    w = layer.base_layer.weight
    b, a = layer.lora_B[name].weight, layer.lora_A[name].weight
    v = layer.lora_scale_vector[name].weight
    return x @ (w + layer.scaling[name] * torch.diag(v) @ b @ a).T + (0 if layer.base_layer.bias is None else
                                                                       layer.base_layer.bias)


def test_injects_the_variant_and_its_layer_equals_the_dense_formula():
    model = scaled_model()
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.lora_variant["default"], ScaledLora)
    x = torch.randn(3, layer.base_layer.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(layer, "default", x))
        assert not torch.allclose(layer(x), layer.base_layer(x))  # the adapter does something


def test_trains_a_step_and_only_its_own_tensors_change():
    model = scaled_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(k in n for k in ("lora_A", "lora_B", ROLE)) for n in trainable)
    assert any(ROLE in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = token_ids(2, 9)
    losses = train_steps(model, ids, steps=3)
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and any(ROLE in n for n in changed)


def test_saves_and_loads_with_its_own_file_key(tmp_path):
    model = scaled_model()
    ids = token_ids(2, 7)
    lorakit.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert config["peft_type"] == "SCALED_LORA"
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_scale_vector.weight" in keys
    fresh = lorakit.load_adapter(tiny_llama(), tmp_path)
    assert isinstance(lorakit.get_config(fresh), ScaledLoraConfig)
    torch.testing.assert_close(logits(fresh, ids), logits(model, ids))
    layer = fresh.model.layers[1].self_attn.v_proj
    x = torch.randn(2, layer.base_layer.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(layer, "default", x))


def test_merges_to_the_unmerged_output_and_the_dense_weight():
    model = scaled_model()
    ids = token_ids(2, 7)
    unmerged = logits(model, ids)
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        expected_w = layer.base_layer.weight + layer.scaling["default"] * (
            torch.diag(layer.lora_scale_vector["default"].weight) @ layer.lora_B["default"].weight
            @ layer.lora_A["default"].weight)
    merged = lorakit.merge_and_unload(model)
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected_w)
    torch.testing.assert_close(logits(merged, ids), unmerged)


def test_served_in_a_mixed_batch_each_row_equals_the_row_alone():
    model = scaled_model("a", seed=1)
    torch.manual_seed(2)
    lorakit.add_adapter(model, ScaledLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"],
                                                init_lora_weights=False), "b")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"],
                                                  init_lora_weights=False), "c")
    rows = ["a", None, "b", [("a", 0.5), ("c", 0.5)], "c"]
    ids = token_ids(len(rows), 6)
    with torch.no_grad(), lorakit.mixed_adapters(model, rows):
        mixed = model(ids).logits
    for i, entry in enumerate(rows):
        row = ids[i:i + 1]
        if entry is None:
            with lorakit.disable_adapters(model):
                alone = logits(model, row)
        elif isinstance(entry, str):
            lorakit.set_adapter(model, entry)
            alone = logits(model, row)
        else:  # a weighted pair: the base plus each adapter's update at its weight (adapter scales set directly)
            alone = _weighted(model, row, entry)
        torch.testing.assert_close(mixed[i:i + 1], alone)


def test_served_from_the_servers_cache_equals_the_library(tmp_path):
    """The server reads the file through the registry (its own tensor role, its row factor) and serves it."""
    model = scaled_model()
    lorakit.save_adapter(model, tmp_path / "toy")
    cache = AdapterCache(copy.deepcopy(tiny_llama()), tmp_path, max_resident=2)
    ids = token_ids(2, 6)
    cache.ensure(["toy"])
    with torch.no_grad(), use_plan(cache.layers(), cache.plan([[("toy", 1.0)], []])):
        served = cache.model(ids).logits
    torch.testing.assert_close(served[:1], logits(model, ids[:1]))
    torch.testing.assert_close(served[1:], logits(tiny_llama(), ids[1:]))
    assert not torch.allclose(served[:1], served[1:])


def _weighted(model: nn.Module, row: torch.Tensor, entries) -> torch.Tensor:
    """Both adapters active, each layer's scaling multiplied by its weight: sum_k w_k · (adapter k's update)."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    saved = [(m, dict(m.scaling)) for m in layers]
    try:
        for m in layers:
            for name, weight in entries:
                if name in m.scaling:
                    m.scaling[name] = m.scaling[name] * weight
        lorakit.set_adapter(model, [name for name, _ in entries])
        return logits(model, row)
    finally:
        for m, scaling in saved:
            m.scaling.clear()
            m.scaling.update(scaling)
