"""`lorakit merge BASE ADAPTER OUT` writes a model that plain transformers loads and that computes what the
base model with the adapter computes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import lorakit
from lorakit.cli.main import main
from lorakit.hf.config import ModelConfig
from lorakit.hf.models import load_model
from lorakit.hf.tiny import make_tiny_model
from lorakit.train.run import train
from tests.train.runs import config_of, make_run

IDS = torch.tensor([[5, 9, 17, 33, 2, 40], [7, 7, 12, 90, 3, 1]])


def test_merged_causal_lm_loads_in_plain_transformers_with_the_adapters_logits(tmp_path):
    base = make_tiny_model(tmp_path / "base", "llama")
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    lorakit.add_adapter(model, cfg)  # random B: a no-op adapter could not pass
    lorakit.save_adapter(model, tmp_path / "adapter")
    with torch.no_grad():
        expected = model(IDS).logits
        with lorakit.disable_adapters(model):
            base_logits = model(IDS).logits
    assert not torch.allclose(expected, base_logits, atol=1e-3)

    assert main(["merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, expected)
    AutoTokenizer.from_pretrained(tmp_path / "merged")  # the tokenizer travels with the model


def test_merged_classifier_keeps_the_trained_head(tmp_path):
    run = train(config_of(make_run(tmp_path, "cls"), "training.max_steps=3", "training.lr=5e-2")).output_dir
    assert main(["merge", str(tmp_path / "tiny-bert"), str(run), str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny-bert", num_labels=2).eval()
    lorakit.load_adapter(reference, run)  # the unmerged path: adapter layers + the saved head
    ids = IDS % merged.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits)
    assert merged.config.id2label == {0: "cat", 1: "dog"}


def test_merge_refuses_a_non_empty_output(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    base = make_tiny_model(tmp_path / "base", "llama")
    assert main(["merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "out")]) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["base", "adapter"])
def test_merge_with_a_missing_directory_is_one_clear_line(tmp_path, capsys, missing):
    base = make_tiny_model(tmp_path / "base", "llama") if missing == "adapter" else tmp_path / "nope"
    assert main(["merge", str(base), str(tmp_path / "no-adapter"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_merged_mean_pooling_classifier_is_an_encoder_plus_its_head(tmp_path):
    run = train(config_of(make_run(tmp_path, "cls", model={"pooling": "mean"}), "training.max_steps=3",
                          "training.lr=5e-2")).output_dir
    assert main(["merge", str(tmp_path / "tiny-bert"), str(run), str(tmp_path / "merged")]) == 0
    encoder = AutoModel.from_pretrained(tmp_path / "merged").eval()
    head = load_file(str(tmp_path / "merged" / "classifier.safetensors"))
    ids = IDS % encoder.config.vocab_size
    with torch.no_grad():
        pooled = encoder(ids).last_hidden_state.mean(1)  # no padding: the mean over all tokens
        logits = pooled @ head["weight"].T + head["bias"]
        reference = load_model(ModelConfig(task="seq-cls", pooling="mean"), tmp_path / "tiny-bert", ["cat", "dog"])
        lorakit.load_adapter(reference, run)
        torch.testing.assert_close(logits, reference.eval()(ids).logits)


def test_a_qlora_run_merges_from_the_base_it_was_trained_on(tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    from lorakit.train.data_formats import ALPACA_PROMPT
    from lorakit.train.trainer import Trainer
    from tests.train.runs import ANIMALS, COLORS

    words = [" ".join(COLORS + ANIMALS + ["what", "color", "is", "the"]), ALPACA_PROMPT]
    make_tiny_model(tmp_path / "tiny-llama", "llama", words, hidden_size=64)  # 4-bit blocks of 64 inputs
    cfg = config_of(make_run(tmp_path, model={"quantization": "nf4", "compute_dtype": "float32"},
                             lora={"target_modules": ["q_proj", "v_proj", "down_proj"]}, training={"max_steps": 4}))
    trainer = Trainer(cfg)
    run = trainer.train().output_dir
    with torch.no_grad():
        trained = trainer.raw.eval()(IDS).logits  # the adapter on the nf4 base: what the run produced
    assert main(["merge", str(tmp_path / "tiny-llama"), str(run), str(tmp_path / "m")]) == 0
    printed = capsys.readouterr().out
    assert "trained on a nf4 base; merging into its exact dequantization" in printed and "KL" in printed
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")(IDS).logits
        torch.testing.assert_close(merged, trained, rtol=1e-4, atol=1e-4)
        base, fp = str(tmp_path / "tiny-llama"), str(tmp_path / "fp")
        assert main(["merge", base, str(run), fp, "--full-precision-base"]) == 0
        full = AutoModelForCausalLM.from_pretrained(tmp_path / "fp")(IDS).logits
        assert (full - trained).abs().max() > 1e-3  # the original weights are not the model the adapter learned on
