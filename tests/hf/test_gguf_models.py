"""The real SmolLM2-135M-Instruct Q4_1 GGUF (lorakit.assets) as model.path: lorakit loads exactly the model
transformers dequantizes from it, `lorakit train` makes an ordinary PEFT adapter for that model (PEFT gives the
same logits), and `lorakit generate` runs on it. Every load dequantizes 135M parameters (20-40 s on a loaded
2-core machine), so the models are module fixtures: four loads in all."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import lorakit
from lorakit.cli.main import main
from lorakit.hf.config import ModelConfig
from lorakit.hf.models import load_model
from lorakit.hf.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
PROMPT = "What is the capital of France?"
TARGETS = ["q_proj", "v_proj"]


def chat_ids(tokenizer) -> torch.Tensor:
    """The prompt as `lorakit generate --chat` encodes it."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt")["input_ids"]


def greedy(model, tokenizer, ids: torch.Tensor) -> str:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    """transformers' own load of the file (no lorakit), with its base logits taken before any adapter."""
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).eval()
    ids = chat_ids(tokenizer)
    with torch.no_grad():
        logits = model(ids).logits
    return {"tokenizer": tokenizer, "model": model, "ids": ids, "logits": logits}


@pytest.fixture(scope="module")
def base(smollm2_gguf):
    """lorakit's load (what `lorakit train` trains on), dtype=auto."""
    return load_model(ModelConfig(path=str(smollm2_gguf), dtype="auto"), smollm2_gguf).eval()


@pytest.fixture(scope="module")
def adapter(smollm2_gguf, tmp_path_factory):
    """`lorakit train` with model.path=<the .gguf>: 16 prompt/completion rows, 2 steps of LoRA r=4 on q, v."""
    tmp = tmp_path_factory.mktemp("gguf-train")
    capitals = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")] * 4
    rows = [{"prompt": f"The capital of {country} is", "completion": f" {city}."} for country, city in capitals]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {
        "model": {"path": str(smollm2_gguf), "task": "causal-lm"},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": TARGETS},
        "data": {"train_file": str(tmp / "train.jsonl"), "format": "prompt_completion", "max_seq_len": 32},
        "training": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "progress": False, "scheduler": "constant"},
        "output": {"dir": str(tmp / "out"), "plot": False, "tensorboard": "false", "save_best": False},
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(tmp / "run.yaml")]) == 0
    return tmp / "out"


@pytest.fixture(scope="module")
def peft_outputs(reference, adapter):
    """The adapter loaded by PEFT onto transformers' model: logits, and greedy continuations with and without it."""
    model, tokenizer, ids = reference["model"], reference["tokenizer"], reference["ids"]
    peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    with torch.no_grad():
        logits = peft_model(ids).logits
    adapted = greedy(peft_model, tokenizer, ids)
    with peft_model.disable_adapter():
        base_text = greedy(peft_model, tokenizer, ids)
    peft_model.unload()  # the reference model is shared by the module's tests
    return {"logits": logits, "adapted": adapted, "base": base_text}


def test_lorakit_loads_exactly_the_model_transformers_dequantizes(base, reference):
    assert type(base).__name__ == "LlamaForCausalLM" and base.dtype == torch.float32
    # a plain dense model: nothing left that calls it quantized (save_pretrained and merge need that)
    assert getattr(base.config, "quantization_config", None) is None and not getattr(base, "is_quantized", False)
    theirs = dict(reference["model"].named_parameters())
    for name, param in base.named_parameters():
        assert torch.equal(param, theirs[name]), name
    with torch.no_grad():
        assert torch.equal(base(reference["ids"]).logits, reference["logits"])


def test_the_tokenizer_and_its_chat_template_come_from_the_file(smollm2_gguf, reference):
    tokenizer = load_tokenizer(smollm2_gguf)
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    assert torch.equal(chat_ids(tokenizer), reference["ids"])


def test_the_adapter_records_the_gguf_base_and_its_dense_layer_shapes(adapter, smollm2_gguf, reference):
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(smollm2_gguf.resolve())
    assert config["task_type"] == "CAUSAL_LM" and config["r"] == 4 and sorted(config["target_modules"]) == TARGETS
    with safe_open(adapter / "adapter_model.safetensors", "pt") as handle:
        fingerprint = json.loads(handle.metadata()["lorakit_fingerprint"])
    assert fingerprint["model_type"] == "llama" and fingerprint["architecture"] == "LlamaForCausalLM"
    model = reference["model"]
    shapes = {n: list(model.get_submodule(n).weight.shape) for n, _ in model.named_modules() if n.endswith(
        tuple(TARGETS))}
    assert fingerprint["layer_shapes"] == shapes and len(shapes) == 2 * model.config.num_hidden_layers


def test_the_adapter_gives_peft_and_lorakit_the_same_logits(base, adapter, reference, peft_outputs):
    lorakit.load_adapter(base, adapter)  # checks the recorded fingerprint against lorakit's load of the GGUF
    try:
        with torch.no_grad():
            ours = base(reference["ids"]).logits
    finally:
        lorakit.delete_adapter(base, "default")
    torch.testing.assert_close(ours, peft_outputs["logits"])
    assert (ours - reference["logits"]).abs().max() > 1e-3  # the two trained steps did change the model


def test_lorakit_generate_runs_the_adapter_on_the_gguf(smollm2_gguf, adapter, peft_outputs, capsys):
    assert main(["generate", str(smollm2_gguf), "--adapter", str(adapter), "--chat", "--compare",
                 "--max-new-tokens", "8", "--prompt", PROMPT]) == 0
    expected = f"prompt: {PROMPT}\nbase:    {peft_outputs['base']}\nadapter: {peft_outputs['adapted']}\n\n"
    assert capsys.readouterr().out == expected
