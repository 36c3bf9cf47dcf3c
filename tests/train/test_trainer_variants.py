"""The variants inside `lorakit train`: AdaLoRA, Delta-LoRA and LongLoRA as config sections (DoRA and LoRA+ are
covered by the layer / optimizer tests). Each run lowers the loss, and its saved adapter, loaded onto a fresh
base, is the model the run ended with."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import lorakit
import lorakit.train.run
import lorakit.train.trainer
from lorakit.errors import ConfigError
from lorakit.variants.adalora import AdaLoraConfig, AdaLoraHook
from lorakit.variants.delta_lora import DeltaLoraHook
from tests.train.runs import config_of, make_run
from tests.train.test_resume import StopAt, assert_same_adapter
from tests.train.test_trainer import train_losses

ADALORA = {"peft_type": "ADALORA", "init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 2, "deltaT": 1,
           "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def fresh_base(tmp_path):
    return AutoModelForCausalLM.from_pretrained(str(tmp_path / "tiny-llama")).eval()


def ids() -> torch.Tensor:
    return torch.randint(3, 100, (2, 11), generator=torch.Generator().manual_seed(5))


def run_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids()).logits


def test_adalora_run_prunes_to_the_budget_and_saves_peft_format(tmp_path):
    cfg = config_of(make_run(tmp_path, lora=ADALORA, training={"max_steps": 12}, output={"plot": True}))
    assert isinstance(cfg.lora, AdaLoraConfig)
    trainer = lorakit.train.trainer.Trainer(cfg)
    assert any(isinstance(h, AdaLoraHook) for h in trainer.hooks)  # called automatically, no hooks= needed
    result = trainer.train()
    losses = train_losses(result.output_dir)
    assert min(losses[-3:]) < losses[0]
    summary = result.summary["adalora"]
    layers = 2 * 2  # tiny llama: 2 layers x q_proj, v_proj
    assert summary["initial_total_rank"] == 6 * layers
    assert summary["total_rank"] == summary["target_total_rank"] == 2 * layers
    assert (result.output_dir / "adalora_ranks.png").stat().st_size > 0
    saved = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA"
    assert sum(sum(keep) for keep in saved["rank_pattern"].values()) == 2 * layers
    # the run's written config stays as the user wrote it (the hook's ranks live in the model's copy)
    assert "rank_pattern: {}" in (result.output_dir / "train_config.yaml").read_text()
    # lorakit.load_adapter reads AdaLoRA files too, and gives the trained model
    loaded = lorakit.load_adapter(fresh_base(tmp_path), result.output_dir)
    torch.testing.assert_close(run_logits(loaded), run_logits(trainer.raw), rtol=1e-5, atol=1e-5)


def test_adalora_loads_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    cfg = config_of(make_run(tmp_path, lora=ADALORA, training={"max_steps": 8}))
    trainer = lorakit.train.trainer.Trainer(cfg)
    trainer.train()
    theirs = peft.PeftModel.from_pretrained(fresh_base(tmp_path), str(cfg.output.dir)).eval()
    ours = run_logits(trainer.raw)
    torch.testing.assert_close(run_logits(theirs), ours, rtol=1e-5, atol=1e-5)
    assert (ours - run_logits(fresh_base(tmp_path))).abs().max() > 1e-2  # the adapter does change the model


def test_adalora_run_resumes_exactly(tmp_path):
    settings = dict(lora=ADALORA, training={"max_steps": 10, "save_every": 3})
    config = make_run(tmp_path, **settings)
    reference = lorakit.train.run.train(config_of(config, f"output.dir={tmp_path / 'ref'}")).output_dir
    crashed = config_of(config, f"output.dir={tmp_path / 'crashed'}")
    with pytest.raises(KeyboardInterrupt):
        lorakit.train.trainer.Trainer(crashed, hooks=[StopAt(4)]).train()  # between checkpoints, mid-pruning
    lorakit.train.run.train(crashed, resume=True)
    assert_same_adapter(reference, tmp_path / "crashed")


def test_delta_lora_run_moves_w_and_saves_an_adapter_exact_on_the_original_base(tmp_path):
    cfg = config_of(make_run(tmp_path, delta_lora={"update_ratio": 2.0, "start_step": 2},
                             training={"max_steps": 8}))
    trainer = lorakit.train.trainer.Trainer(cfg)
    hook = next(h for h in trainer.hooks if isinstance(h, DeltaLoraHook))
    w0 = {p: layer.base_weight.clone() for p, layer in hook.layers.items()}
    result = trainer.train()
    losses = train_losses(result.output_dir)
    assert min(losses[-3:]) < losses[0]
    assert all(not torch.equal(layer.base_weight, w0[p]) for p, layer in hook.layers.items())  # W moved
    saved = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert saved["r"] == 2 * cfg.lora.r and lorakit.read_adapter(result.output_dir)[1]["lorakit_delta_lora"]["folded"]
    assert result.summary["delta_lora"]["update_ratio"] == 2.0
    want = run_logits(trainer.raw)
    loaded = lorakit.load_adapter(fresh_base(tmp_path), result.output_dir)
    torch.testing.assert_close(run_logits(loaded), want, rtol=1e-4, atol=1e-4)
    # and `lorakit merge` exports that model as plain weights
    out = tmp_path / "merged"
    assert lorakit.cli.main.main(["merge", str(tmp_path / "tiny-llama"), str(result.output_dir), str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    torch.testing.assert_close(run_logits(merged), want, rtol=1e-4, atol=1e-4)


def test_delta_lora_run_resumes(tmp_path):
    config = make_run(tmp_path, delta_lora={"update_ratio": 2.0, "start_step": 1},
                      training={"max_steps": 8, "save_every": 3})
    reference = lorakit.train.run.train(config_of(config, f"output.dir={tmp_path / 'ref'}")).output_dir
    crashed = config_of(config, f"output.dir={tmp_path / 'crashed'}")
    with pytest.raises(KeyboardInterrupt):
        lorakit.train.trainer.Trainer(crashed, hooks=[StopAt(4)]).train()
    lorakit.train.run.train(crashed, resume=True)
    # W is rebuilt from the anchor on resume (telescoping sum): equal to float rounding, not bit for bit
    ref = lorakit.load_adapter(fresh_base(tmp_path), reference)
    resumed = lorakit.load_adapter(fresh_base(tmp_path), tmp_path / "crashed")
    torch.testing.assert_close(run_logits(resumed), run_logits(ref), rtol=1e-4, atol=1e-4)


def test_longlora_run_uses_s2_attention_and_trains_embeddings_and_norms(tmp_path):
    cfg = config_of(make_run(tmp_path, longlora={"group_size": 8}, training={"max_steps": 8}))
    trainer = lorakit.train.trainer.Trainer(cfg)
    assert trainer.raw.config._attn_implementation == "lorakit_s2_attn"
    result = trainer.train()
    losses = train_losses(result.output_dir)
    assert min(losses[-3:]) < losses[0]
    saved = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert {"embed_tokens", "norm", "input_layernorm", "post_attention_layernorm"} <= set(saved["modules_to_save"])
    # evaluation uses full attention, so a fresh base with the adapter (no S²-Attn) is the same model in eval
    loaded = lorakit.load_adapter(fresh_base(tmp_path), result.output_dir)
    torch.testing.assert_close(run_logits(loaded), run_logits(trainer.raw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sections, message", [
    ({"delta_lora": {}, "lora": {"use_dora": True}}, "needs plain LoRA"),
    ({"delta_lora": {}, "lora": ADALORA}, "needs plain LoRA"),
    ({"delta_lora": {"bogus": 1}}, r"unknown key\(s\) \['delta_lora.bogus'\]"),
    ({"delta_lora": {"adapter_name": "other"}}, "differs from output.adapter_name"),
    ({"lora": {**ADALORA, "target_r": 9}}, "target_r=9 exceeds init_r=6"),
])
def test_variant_sections_are_checked_before_any_model_loads(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=message):
        config_of(make_run(tmp_path, **sections))


def test_longlora_needs_a_causal_lm(tmp_path):
    with pytest.raises(ConfigError, match="trains causal language models"):
        config_of(make_run(tmp_path, "cls", longlora={}))


def test_an_override_turns_a_variant_on(tmp_path):
    path = make_run(tmp_path)
    assert config_of(path).delta_lora is None and config_of(path).longlora is None
    cfg = config_of(path, "delta_lora.update_ratio=1.5")
    assert cfg.delta_lora.update_ratio == 1.5 and cfg.delta_lora.start_step == 500
    assert "delta_lora:\n  update_ratio: 1.5" in cfg.to_yaml()
