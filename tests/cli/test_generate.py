"""`lorakit generate`: greedy output equals transformers' generate on the same model, with and without adapter."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lorakit
from lorakit.cli.main import main
from lorakit.hf.tiny import make_tiny_model


def expected_text(model, tokenizer, prompt: str, n: int = 6) -> str:
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=False, max_new_tokens=n, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def test_greedy_generation_with_and_without_adapter(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "llama", seed=3)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    plain = expected_text(model, tokenizer, "the cat is")
    cfg = lorakit.LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    lorakit.add_adapter(model, cfg)
    lorakit.save_adapter(model, tmp_path / "adapter")
    adapted = expected_text(model, tokenizer, "the cat is")
    assert adapted != plain  # the adapter changes the continuation, so the test can tell them apart

    assert main(["generate", str(base), "--prompt", "the cat is", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == plain.strip()
    assert main(["generate", str(base), "--adapter", str(tmp_path / "adapter"), "--prompt", "the cat is",
                 "--max-new-tokens", "6", "--compare"]) == 0
    out = capsys.readouterr().out
    assert f"base:    {plain}" in out and f"adapter: {adapted}" in out


def test_chat_without_a_template_is_a_clear_error(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "llama")
    assert main(["generate", str(base), "--prompt", "hi", "--chat"]) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_a_classifier_is_not_a_causal_lm(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "bert", "bert")
    assert main(["generate", str(base), "--prompt", "hi"]) == 2
    assert "not a causal language model" in capsys.readouterr().err
