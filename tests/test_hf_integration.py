"""Injection is in place, so Hugging Face machinery keeps working: the class, generate, Trainer, save_pretrained,
torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch

import lorakit
from tests.helpers import tiny_llama, token_ids


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def base() -> torch.nn.Module:
    return tiny_llama()


@pytest.fixture
def model(base) -> torch.nn.Module:
    """The tiny llama with a random (non-zero) adapter on attention and MLP projections."""
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                init_lora_weights=False)
    return lorakit.add_adapter(copy.deepcopy(base), config)


def test_injected_model_keeps_its_class(base, model) -> None:
    from transformers import GenerationMixin, PreTrainedModel

    assert type(model) is type(base)
    assert isinstance(model, PreTrainedModel) and isinstance(model, GenerationMixin)


def test_greedy_generate_equals_argmax_loop_and_merged_model(base, model) -> None:
    prompt = token_ids(batch=2, seq=5)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        generated = model.generate(prompt, **settings)
    ids = prompt
    for _ in range(6):  # the reference: full forward each step, no KV cache
        next_ids = _logits(model, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_ids], dim=1)
    assert torch.equal(generated, ids)
    with torch.no_grad():
        assert not torch.equal(base.generate(prompt, **settings), generated)  # the adapter changes the text
        merged = lorakit.merge_and_unload(model)
        assert torch.equal(merged.generate(prompt, **settings), generated)


def test_hf_trainer_trains_only_the_adapter(tmp_path, model) -> None:
    from transformers import Trainer, TrainingArguments

    data = [{"input_ids": ids, "labels": ids} for ids in token_ids(batch=8, seq=6, seed=3)]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    adapter = {n for n in before if ".lora_A." in n or ".lora_B." in n}
    assert changed == adapter  # every adapter tensor moved, nothing else did
    assert type(model).__name__ == "LlamaForCausalLM"


def test_save_pretrained_on_injected_and_merged_model(tmp_path, base, model) -> None:
    from safetensors.torch import load_file

    ids = token_ids()
    model.save_pretrained(tmp_path / "injected")  # the PEFT adapter (tests/test_hf_trainer.py reloads it)
    keys = set(load_file(tmp_path / "injected" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    expected = _logits(model, ids)
    merged = lorakit.merge_and_unload(model)
    merged.save_pretrained(tmp_path / "merged")  # a plain checkpoint of the base architecture
    reloaded = type(base).from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_logits(reloaded, ids), expected)


def test_torch_compile_gives_same_outputs(model) -> None:
    """The dynamo trace, whole-graph (no graph break in lorakit's layers); inductor is in the slow test below."""
    torch._dynamo.reset()
    ids = token_ids()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(_logits(compiled, ids), _logits(model, ids))


@pytest.mark.slow
def test_torch_compile_inductor_follows_adapter_switches(base, model) -> None:
    """Compiled with the default backend; set_adapter / disable / merge after compiling must reach the graph."""
    torch._dynamo.reset()
    ids = token_ids()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["k_proj"], init_lora_weights=False), "b",
                        activate=False)
    expected = {"default": _logits(model, ids), "base": _logits(base, ids)}
    lorakit.set_adapter(model, "b")
    expected["b"] = _logits(model, ids)
    lorakit.set_adapter(model, "default")
    compiled = torch.compile(model)
    torch.testing.assert_close(_logits(compiled, ids), expected["default"])
    lorakit.set_adapter(model, "b")
    torch.testing.assert_close(_logits(compiled, ids), expected["b"])
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(_logits(compiled, ids), expected["base"])
