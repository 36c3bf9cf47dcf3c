"""lorakit's adapter files read the way vLLM reads a PEFT LoRA, and the model vLLM would compute from them.

vLLM is not installable here (GPU wheels), so its loading rules are re-implemented below from its source
(vllm-project/vllm, 2025-2026 main): vllm/lora/peft_helper.py (PEFTHelper: required fields r / lora_alpha /
target_modules; refuses modules_to_save other than classifier / score, use_dora, lora_bias, bias != "none",
inits that rewrite the base (PiSSA, OLoRA, ...), a rank above max_lora_rank (16 by default); scaling lora_alpha / r,
or / sqrt(r) with use_rslora, per module through rank_pattern / alpha_pattern with PEFT's suffix rule),
vllm/lora/utils.py (parse_fine_tuned_lora_name: the prefix base_model.model., then only `<module>.lora_A.weight`,
`<module>.lora_B.weight`, `<module>.lora_embedding_A`, `<module>.lora_embedding_B`; any other key is an error) and
vllm/lora/lora_model.py (from_local_checkpoint: adapter_model.safetensors, every module's last name must be a
layer vLLM can adapt; from_lora_tensors: per module A (r, in), B (out, r) and its scaling; the layer then computes
x W^T + s x A^T B^T, i.e. W + s B A).
The test applies W + s B A to a fresh base exactly as read, and compares with lorakit's logits.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from tests.helpers import logits, tiny_llama, token_ids

PREFIX = "base_model.model."
MAX_LORA_RANK = 16  # vLLM's LoRAConfig default
INITS_THAT_KEEP_THE_BASE = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # besides True / False
# layers vLLM adapts in a Llama (its linear layers, before packing q/k/v and gate/up, and the embeddings)
LLAMA_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
                      "lm_head"}


class VllmRefuses(ValueError):
    pass


@dataclass
class VllmLora:
    a: torch.Tensor  # (r, in), or (r, vocab) for an embedding
    b: torch.Tensor  # (out, r), or (dim, r)
    scaling: float
    embedding: bool


def _peft_helper_errors(config: dict) -> list[str]:
    missing = {"r", "lora_alpha", "target_modules"} - set(config)
    if missing:
        return [f"missing required fields {sorted(missing)}"]
    errors = []
    if [m for m in config.get("modules_to_save") or [] if m not in ("classifier", "score")]:
        errors.append("modules_to_save")
    if config.get("use_dora"):
        errors.append("DoRA")
    if config.get("lora_bias"):
        errors.append("lora_bias")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in INITS_THAT_KEEP_THE_BASE:
        errors.append(f"init_lora_weights={init!r}")
    if config.get("bias", "none") != "none":
        errors.append("bias")
    if max([config["r"], *(config.get("rank_pattern") or {}).values()]) > MAX_LORA_RANK:
        errors.append("rank above max_lora_rank")
    return errors


def _pattern(pattern: dict, name: str):
    for key, value in pattern.items():  # PEFT's rule: a suffix at a "." boundary, the first key that matches
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return None


def _rank_and_scaling(config: dict, module: str) -> tuple[int, float]:
    rank = _pattern(config.get("rank_pattern") or {}, module) or config["r"]
    alpha = _pattern(config.get("alpha_pattern") or {}, module)
    alpha = config["lora_alpha"] if alpha is None else alpha
    return rank, alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _parse(key: str) -> tuple[str, str]:
    """(module, role) as parse_fine_tuned_lora_name; role in lora_A / lora_B / lora_embedding_A / _B."""
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    parts = name.split(".")
    if parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[:-2]), parts[-2]
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[:-1]), parts[-1]
    raise VllmRefuses(f"{key} is unsupported LoRA weight")


def vllm_read(directory: Path, expected_modules: set[str] = LLAMA_LORA_MODULES) -> dict[str, VllmLora]:
    config = json.loads((directory / "adapter_config.json").read_text())
    errors = _peft_helper_errors(config)
    if errors:
        raise VllmRefuses(", ".join(errors))
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, role = _parse(key)
        if module.rsplit(".", 1)[-1] not in expected_modules:
            raise VllmRefuses(f"unexpected target module {module}")
        parts.setdefault(module, {})[role] = tensor
    loras = {}
    for module, found in parts.items():
        embedding = "lora_embedding_A" in found
        a, b = (found["lora_embedding_A"], found["lora_embedding_B"]) if embedding else (
            found["lora_A"], found["lora_B"])
        rank, scaling = _rank_and_scaling(config, module)
        assert a.shape[0] == b.shape[1] == rank, (module, a.shape, b.shape, rank)
        loras[module] = VllmLora(a, b, scaling, embedding)
    return loras


def apply_like_vllm(base: torch.nn.Module, loras: dict[str, VllmLora]) -> torch.nn.Module:
    """A copy of the base with each module's weight W + s·B·A (embeddings: their table + s·(B·A)^T)."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for module, lora in loras.items():
            weight = model.get_submodule(module).weight  # (out, in), or (vocab, dim)
            delta = lora.scaling * (lora.b @ lora.a)  # (out, in), or (dim, vocab)
            weight.add_(delta.T if lora.embedding else delta)
    return model


CASES = {
    "plain": dict(target_modules=["q_proj", "v_proj", "up_proj"]),
    "rslora": dict(target_modules=["q_proj", "v_proj"], use_rslora=True, lora_alpha=5),
    "patterns": dict(target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"v_proj": 2},
                     alpha_pattern={"down_proj": 3.0, r"layers\.1\.self_attn\.q_proj": 7.0}),
    "embedding": dict(target_modules=["embed_tokens", "o_proj"]),
    "all_linear": dict(target_modules="all-linear"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lorakit_adapter_passes_vllms_rules_and_means_the_same_model(tmp_path, case) -> None:
    base, ids = tiny_llama(), token_ids()
    settings = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, **CASES[case]}
    model = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**settings))
    lorakit.save_adapter(model, tmp_path)
    as_vllm = apply_like_vllm(base, vllm_read(tmp_path))
    torch.testing.assert_close(logits(as_vllm, ids), logits(model, ids))
    assert not torch.allclose(logits(base, ids), logits(model, ids))  # the adapter does change the logits


def test_a_pissa_adapter_is_saved_as_one_vllm_serves_on_the_original_base(tmp_path) -> None:
    base, ids = tiny_llama(), token_ids()
    model = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa"))
    with torch.no_grad():  # a "trained" adapter: move B off its initial value
        for _, layer in lorakit.inject.lora_layers(model):
            layer.lora_weights("default")[1].add_(0.05)
    lorakit.save_adapter(model, tmp_path)
    as_vllm = apply_like_vllm(base, vllm_read(tmp_path))
    torch.testing.assert_close(logits(as_vllm, ids), logits(model, ids))


# what lorakit can write that vLLM refuses (the docs say so): the refusal, not a silently different model
REFUSED = {
    "DoRA": dict(target_modules=["q_proj"], use_dora=True),
    "modules_to_save": dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
    "bias": dict(target_modules=["q_proj"], bias="all"),
    "lora_bias": dict(target_modules=["q_proj"], lora_bias=True),
    "rank above max_lora_rank": dict(target_modules=["q_proj"], r=32),
}


@pytest.mark.parametrize("reason", sorted(REFUSED))
def test_what_vllm_refuses(tmp_path, reason) -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(**{"r": 4, **REFUSED[reason]}))
    lorakit.save_adapter(model, tmp_path)
    with pytest.raises(VllmRefuses, match=reason):
        vllm_read(tmp_path)


def test_a_raw_pissa_file_is_refused(tmp_path) -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(r=4, target_modules=["q_proj"],
                                                                 init_lora_weights="pissa"))
    lorakit.save_adapter(model, tmp_path, pissa_raw=True)
    with pytest.raises(VllmRefuses, match="init_lora_weights='pissa'"):
        vllm_read(tmp_path)
