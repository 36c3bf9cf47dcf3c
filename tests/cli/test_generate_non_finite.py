"""`lorakit generate` refuses NaN/Inf (in the adapter, or in the logits) with one line instead of printing ''."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from lorakit.cli.main import main
from lorakit.hf.tiny import make_tiny_model
from tests.cli.cli_helpers import adapter_on, one_error_line


def test_a_nan_adapter_is_refused(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "llama")
    adapter_on(base, tmp_path / "adapter", poison=True)
    capsys.readouterr()
    code = main(["generate", str(base), "--adapter", str(tmp_path / "adapter"), "--prompt", "the cat is",
                 "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "model.layers.1.self_attn.v_proj" in captured.err and "NaN/Inf" in captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("lorakit generate: error: ")


def test_non_finite_logits_are_refused(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "llama")
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")  # every position's logits become NaN/Inf
    model.save_pretrained(tmp_path / "broken")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).is_file():
            (tmp_path / "broken" / name).write_bytes((base / name).read_bytes())
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "broken"), "--prompt", "the cat is", "--max-new-tokens", "4"]) == 2
    assert "non-finite logits" in one_error_line(capsys, "generate")
