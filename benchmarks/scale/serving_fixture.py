"""The serving benchmark's inputs: a base model (SmolLM2-135M-Instruct from its GGUF, or a tiny random Llama), many
random LoRA adapters written straight to disk in PEFT's format, and a fixed list of greedy requests.

Adapters are written tensor by tensor (no model copy per adapter) so a thousand take seconds: A ~ N(0, 1/in), B ~
N(0, B_STD^2), non-zero, so every adapter changes the model's output. Kinds cycle through r 8 / 16 on q/v and r 8 on
every linear layer."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

B_STD = 0.05
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KINDS = [(8, ["q_proj", "v_proj"]), (16, ["q_proj", "v_proj"]), (8, ["q_proj", "v_proj"]), (16, ["q_proj", "v_proj"]),
         (8, ["q_proj", "v_proj"]), (16, ["q_proj", "v_proj"]), (8, ["q_proj", "v_proj"]), (8, ALL_LINEAR)]
PROMPTS = ["The capital of France is", "Write a haiku about the sea:", "List three fruits:", "Once upon a time,",
           "The best way to learn Python is", "Explain gravity in one sentence:", "My favourite colour is",
           "A good name for a cat is", "The weather today is", "To make tea, first"]


@dataclass(frozen=True)
class Job:
    adapter: str
    prompt_ids: tuple[int, ...]
    max_tokens: int


def load_base(folder: Path, quick: bool):
    """(model, tokenizer, description). Full: SmolLM2-135M-Instruct dequantized to float32; quick: a tiny Llama."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quick:
        from lorakit.hf.tiny import make_tiny_model

        path = folder / "tiny-base"
        if not path.exists():
            make_tiny_model(path, "llama", words=" ".join(PROMPTS).split(), hidden_size=64, layers=2)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return model, tokenizer, "tiny random Llama (hidden 64, 2 layers)"
    from lorakit.assets import asset_path
    from lorakit.hf.gguf import load_dense
    from lorakit.hf.tokenizer import load_tokenizer

    gguf = asset_path("smollm2")
    model = load_dense(AutoModelForCausalLM, gguf).eval()
    return model, load_tokenizer(gguf), "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32)"


def write_adapters(model: nn.Module, folder: Path, count: int) -> list[str]:
    """`count` adapters ad0000.. in `folder` (one sub-folder each, PEFT's file layout); returns their names."""
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    names = []
    for i in range(count):
        name = f"ad{i:04d}"
        names.append(name)
        target = folder / name
        if (target / "adapter_model.safetensors").is_file():
            continue
        rank, targets = KINDS[i % len(KINDS)]
        generator = torch.Generator().manual_seed(1000 + i)
        tensors = {}
        for path, layer in linears.items():
            if path.rsplit(".", 1)[-1] not in targets:
                continue
            a = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features ** 0.5
            b = torch.randn(layer.out_features, rank, generator=generator) * B_STD
            tensors[f"base_model.model.{path}.lora_A.weight"] = a
            tensors[f"base_model.model.{path}.lora_B.weight"] = b
        target.mkdir(parents=True, exist_ok=True)
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": targets, "lora_dropout": 0.0,
                  "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
                  "init_lora_weights": True, "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
                  "inference_mode": True, "modules_to_save": None}
        (target / "adapter_config.json").write_text(json.dumps(config))
        save_file(tensors, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    return names


def make_jobs(tokenizer, names: list[str], count: int, seed: int, max_tokens: tuple[int, int]) -> list[Job]:
    """`count` requests, each for a random adapter of `names`, a short prompt and max_tokens in the range."""
    rng = random.Random(seed)
    encoded = [tuple(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    return [Job(rng.choice(names), rng.choice(encoded), rng.randint(*max_tokens)) for _ in range(count)]
