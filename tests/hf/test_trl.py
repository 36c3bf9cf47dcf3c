"""TRL's SFTTrainer and DPOTrainer (the real TRL) train a lorakit model on a tiny random Llama: only the adapter
changes, the saved folder is a PEFT adapter that PEFT loads with the trained logits, and DPO's reference is the
base model made from the policy's own tensors (lorakit.integrations.trl.reference_model), not a second copy."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.integrations.trl import reference_model
from tests.helpers import logits, tiny_llama

TARGETS = ["q_proj", "v_proj", "up_proj"]
TEXTS = ["the cat saw the dog", "a red bird can fly over the water", "one two three four five", "the sun and the moon"]
PREFERENCES = {  # chosen: the answer DPO should come to prefer over the rejected one
    "prompt": ["what color is the sun ?", "name a big animal .", "one two three"],
    "chosen": ["red", "a big dog", "four five"],
    "rejected": ["blue water", "the small fish", "ten"],
}
IDS = torch.tensor([[2, 40, 41, 42, 43, 44, 45], [2, 60, 61, 62, 63, 64, 65]])  # words of the tokenizer


@dataclass
class Run:
    base: torch.nn.Module  # an untouched copy of the base model
    model: torch.nn.Module  # the lorakit model the trainer trained
    trainer: object
    saved: Path  # trainer.save_model's folder


def _tokenizer():
    from lorakit.hf.tiny import build_tokenizer

    return build_tokenizer()


def _base(tokenizer) -> torch.nn.Module:
    return tiny_llama(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def _lora(base: torch.nn.Module, targets: list[str] = TARGETS) -> torch.nn.Module:
    return lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets))


def _common(out: Path) -> dict:
    # bf16=False: TRL's configs default to bf16 autocast, which accelerate leaves wrapped around model.forward after
    # training, so the trained model would then be compared in bf16 with PEFT's fp32 logits
    return dict(output_dir=str(out), max_steps=6, learning_rate=3e-2, use_cpu=True, bf16=False, report_to=[],
                logging_steps=1, disable_tqdm=True, save_strategy="no", seed=0, dataloader_num_workers=0)


def _sft(out: Path, targets: list[str] = TARGETS) -> Run:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = _tokenizer()
    base = _base(tokenizer)
    model = _lora(base, targets)
    args = SFTConfig(per_device_train_batch_size=4, **_common(out))  # TRL's default: activation checkpointing on
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS * 4}),
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out / "final"))
    return Run(base, model.eval(), trainer, out / "final")


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> Run:
    return _sft(tmp_path_factory.mktemp("sft"))


@pytest.fixture(scope="module")
def dpo(tmp_path_factory) -> Run:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    out = tmp_path_factory.mktemp("dpo")
    tokenizer = _tokenizer()
    base = _base(tokenizer)
    model = _lora(base)
    args = DPOConfig(per_device_train_batch_size=6, beta=0.1, **_common(out))
    trainer = DPOTrainer(model=model, ref_model=reference_model(model), args=args,
                         train_dataset=Dataset.from_dict({k: v * 2 for k, v in PREFERENCES.items()}),
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out / "final"))
    return Run(base, model.eval(), trainer, out / "final")


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _base_tensors_unchanged(run: Run) -> None:
    """Every base tensor of the trained model (under `.base_layer.` where a LoRA layer wraps it) is bit-identical."""
    trained = run.model.state_dict()
    for key, value in run.base.state_dict().items():
        module, _, leaf = key.rpartition(".")
        key = key if key in trained else f"{module}.base_layer.{leaf}"
        assert torch.equal(trained[key], value), key


def _peft_logits(run: Run) -> torch.Tensor:
    from peft import PeftModel

    return logits(PeftModel.from_pretrained(copy.deepcopy(run.base), run.saved), IDS)


# -- SFTTrainer ------------------------------------------------------------------------------------------------------
def test_sft_lowers_the_loss(sft: Run) -> None:
    assert sft.trainer.args.gradient_checkpointing  # TRL's default, kept: the adapter trains through it
    losses = _losses(sft.trainer)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.05, losses


def test_sft_changes_only_the_adapter(sft: Run) -> None:
    _base_tensors_unchanged(sft)
    trained = lorakit.adapter_state_dict(sft.model)
    assert all(torch.count_nonzero(trained[k]) > 0 for k in trained if "lora_B" in k)  # every B left its 0


def test_sft_save_model_is_a_peft_adapter_with_the_trained_logits(sft: Run) -> None:
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in sft.saved.iterdir()}
    assert not (sft.saved / "model.safetensors").exists()
    expected = logits(sft.model, IDS)
    assert not torch.allclose(logits(sft.base, IDS), expected)  # guard: training changed the logits
    torch.testing.assert_close(_peft_logits(sft), expected)


def test_sft_cannot_train_an_adapter_on_lm_head(tmp_path) -> None:
    """TRL computes log-probs from lm_head.weight directly (its fused LM head), so an adapter there gets no
    gradient: its lora_B stays 0 while the other layers train. docs/trl.md says to leave lm_head out."""
    run = _sft(tmp_path, ["q_proj", "lm_head"])
    assert torch.count_nonzero(run.model.lm_head.lora_B["default"].weight) == 0
    assert torch.count_nonzero(run.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight) > 0


# -- DPOTrainer ------------------------------------------------------------------------------------------------------
def test_dpo_reference_is_the_policys_base_not_a_copy(dpo: Run) -> None:
    reference, policy = dpo.trainer.ref_model, dpo.trainer.model
    assert reference is not None and reference is not policy
    policy_params = {id(p) for p in policy.parameters()}
    assert all(id(p) in policy_params for p in reference.parameters())  # the same Parameter objects
    assert all(not p.requires_grad for p in reference.parameters())
    storages = {t.untyped_storage().data_ptr() for t in [*policy.parameters(), *policy.buffers()]}
    assert {t.untyped_storage().data_ptr() for t in [*reference.parameters(), *reference.buffers()]} <= storages


def _dense_log_probs(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the completion tokens, from the full logits: log_softmax, then the next token's entry."""
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_token = torch.log_softmax(out[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (per_token * batch["completion_mask"][:, 1:]).sum(1).chunk(2)


def test_dpo_reference_log_probs_are_the_base_models(dpo: Run) -> None:
    """After training, TRL's reference log-probs still equal the untouched base model's; the policy's differ."""
    trainer = dpo.trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    reference = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    expected = _dense_log_probs(dpo.base, batch)
    for got, want in zip(reference, expected, strict=True):
        torch.testing.assert_close(got, want)
    policy = trainer.compute_ref_log_probs(trainer.model, batch)  # the same computation on the trained policy
    assert not torch.allclose(policy[0], expected[0])  # guard: the adapter moved the policy away from the base


def test_dpo_raises_the_reward_margin(dpo: Run) -> None:
    margins = [entry["rewards/margins"] for entry in dpo.trainer.state.log_history if "rewards/margins" in entry]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # fresh adapter (lora_B = 0): policy == reference
    assert margins[-1] > margins[0] + 0.05, margins
    _base_tensors_unchanged(dpo)


def test_dpo_save_model_is_a_peft_adapter_with_the_trained_logits(dpo: Run) -> None:
    expected = logits(dpo.model, IDS)
    assert not torch.allclose(logits(dpo.base, IDS), expected)
    torch.testing.assert_close(_peft_logits(dpo), expected)


def test_dpo_from_a_trained_adapter_precomputes_the_starting_policy(tmp_path) -> None:
    """To keep a trained adapter as the reference (TRL's behaviour for a PeftModel): no ref_model and
    precompute_ref_log_probs=True; TRL holds no reference model and the reference is the policy at the start."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = _tokenizer()
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    model = lorakit.add_adapter(_base(tokenizer), config)  # random lora_B: the "trained" adapter
    start = copy.deepcopy(model)
    args = DPOConfig(per_device_train_batch_size=3, precompute_ref_log_probs=True, **_common(tmp_path))
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PREFERENCES),
                         processing_class=tokenizer)
    assert trainer.ref_model is None
    rows = [trainer.train_dataset[i] for i in range(3)]
    expected = _dense_log_probs(start, trainer.data_collator(rows))
    torch.testing.assert_close(torch.tensor([r["ref_chosen_logps"] for r in rows]), expected[0])
    torch.testing.assert_close(torch.tensor([r["ref_rejected_logps"] for r in rows]), expected[1])
    assert not torch.allclose(expected[0], _dense_log_probs(lorakit.unload(start), trainer.data_collator(rows))[0])
