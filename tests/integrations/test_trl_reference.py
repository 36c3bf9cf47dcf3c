"""lorakit.integrations.trl.reference_model: the base model under the adapters, built from the policy's own tensors.

The trainers themselves run in tests/hf/test_trl.py; here the view alone, against an untouched copy of the base."""

from __future__ import annotations

import copy

import pytest
import torch

import lorakit
from lorakit.errors import AdapterError
from lorakit.integrations.trl import reference_model
from lorakit.layers.base import LoraLayer
from tests.helpers import logits, tiny_llama, token_ids

TARGETS = ["q_proj", "v_proj", "up_proj"]


def _policy(base: torch.nn.Module, **options) -> torch.nn.Module:
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, **options)
    return lorakit.add_adapter(copy.deepcopy(base), config)  # random lora_B: the adapter changes the logits


def _storages(module: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}


def test_reference_computes_the_base_models_logits() -> None:
    base, ids = tiny_llama(), token_ids()
    policy = _policy(base)
    reference = reference_model(policy)
    assert type(reference) is type(base)
    torch.testing.assert_close(logits(reference, ids), logits(base, ids), rtol=0, atol=0)  # the same operations
    assert not torch.allclose(logits(policy, ids), logits(base, ids))  # guard: the adapter does change them


def test_reference_holds_no_tensor_of_its_own() -> None:
    """One copy of the base in memory: every parameter and buffer of the reference is the policy's own storage."""
    policy = _policy(tiny_llama())
    reference = reference_model(policy)
    assert _storages(reference) <= _storages(policy)
    policy_params = {id(p) for p in policy.parameters()}
    assert all(id(p) in policy_params for p in reference.parameters())
    assert not any(isinstance(m, LoraLayer) for m in reference.modules())
    assert sum(p.numel() for p in reference.parameters()) == lorakit.count_parameters(policy)[1] - \
        lorakit.count_parameters(policy)[0]  # exactly the frozen base


def test_the_policy_keeps_its_adapters() -> None:
    base, ids = tiny_llama(), token_ids()
    policy = _policy(base)
    before = logits(policy, ids)
    reference_model(policy)
    torch.testing.assert_close(logits(policy, ids), before, rtol=0, atol=0)
    assert lorakit.list_adapters(policy) == ["default"]
    assert "save_pretrained" in policy.__dict__  # still writes its adapter


def test_reference_is_a_plain_model() -> None:
    reference = reference_model(_policy(tiny_llama()))
    assert lorakit.list_adapters(reference) == []
    assert "save_pretrained" not in reference.__dict__  # saves as its class does, not as an adapter


def test_reference_follows_the_policy_when_it_is_moved() -> None:
    """The Trainer moves the policy (device, dtype) after the reference is made; the reference sees the move."""
    base, ids = tiny_llama(), token_ids()
    policy = _policy(base)
    reference = reference_model(policy)
    policy.double()
    assert all(p.dtype == torch.float64 for p in reference.parameters())
    torch.testing.assert_close(logits(reference, ids), logits(base.double(), ids), rtol=0, atol=0)


def test_hooks_and_patched_forwards_stay_with_their_model() -> None:
    base, ids = tiny_llama(), token_ids()
    policy = _policy(base)
    policy.forward = lambda *args, **kwargs: "patched"  # as TRL patches the policy it trains (a fused LM head)
    reference = reference_model(policy)
    policy.model.layers[0].register_forward_hook(lambda module, args, out: (out[0] * 0, *out[1:])
                                                if isinstance(out, tuple) else out * 0)
    torch.testing.assert_close(logits(reference, ids), logits(base, ids), rtol=0, atol=0)


def test_modules_to_save_run_the_original_module() -> None:
    base, ids = tiny_llama(), token_ids()
    policy = _policy(base, modules_to_save=["lm_head"])
    with torch.no_grad():
        for param in policy.lm_head.modules_to_save["default"].parameters():
            param.add_(1.0)  # the trainable copy moves away from the original head
    reference = reference_model(policy)
    torch.testing.assert_close(logits(reference, ids), logits(base, ids), rtol=0, atol=0)


def test_refuses_a_model_without_adapters() -> None:
    with pytest.raises(AdapterError, match="no lorakit adapters"):
        reference_model(tiny_llama())


def test_refuses_merged_adapters() -> None:
    policy = _policy(tiny_llama())
    lorakit.merge_adapter(policy)
    with pytest.raises(AdapterError, match=r"merged.*unmerge_adapter"):
        reference_model(policy)


def test_refuses_an_init_that_rewrote_the_base() -> None:
    config = lorakit.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="pissa")
    policy = lorakit.add_adapter(tiny_llama(), config)
    with pytest.raises(AdapterError, match=r"PiSSA.*precompute_ref_log_probs"):
        reference_model(policy)
