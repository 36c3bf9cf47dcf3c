"""save_pretrained and the Hugging Face Trainer on a model with lorakit adapters write a PEFT adapter, which PEFT
and lorakit reload with the trained logits, and from which the Trainer resumes exactly."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.errors import LorakitError
from tests.helpers import logits, tiny_llama, token_ids

TARGETS = ["q_proj", "v_proj", "up_proj"]


def _lora_model(base: torch.nn.Module) -> torch.nn.Module:
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    return lorakit.add_adapter(copy.deepcopy(base), config)


def _trainer(model, out: Path, max_steps: int, save_steps: int | None = None):
    from transformers import Trainer, TrainingArguments

    data = [{"input_ids": ids, "labels": ids} for ids in token_ids(batch=8, seq=6, seed=3)]
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=2, learning_rate=1e-2, use_cpu=True,
        report_to=[], save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, logging_steps=1,
        disable_tqdm=True, dataloader_num_workers=0, seed=0, data_seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=data)


def _adapter_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lorakit.adapter_state_dict(model).items()}


def test_save_pretrained_writes_a_peft_adapter_that_peft_loads(tmp_path) -> None:
    from peft import PeftModel

    base, ids = tiny_llama(), token_ids()
    model = _lora_model(base)
    model.save_pretrained(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "adapter_config.json" in names and "adapter_model.safetensors" in names
    assert "model.safetensors" not in names  # not the whole model with lorakit's in-memory keys
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"
    peft_model = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(logits(peft_model, ids), logits(model, ids))
    assert not torch.allclose(logits(base, ids), logits(model, ids))  # the adapter does change the logits


def test_save_pretrained_writes_every_adapter_or_the_selected_ones(tmp_path) -> None:
    base, ids = tiny_llama(), token_ids()
    model = _lora_model(base)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["k_proj"], init_lora_weights=False), "other",
                        activate=False)
    model.save_pretrained(tmp_path / "all")
    assert (tmp_path / "all" / "adapter_config.json").is_file()  # "default" at the root, others in subfolders
    assert (tmp_path / "all" / "other" / "adapter_config.json").is_file()
    model.save_pretrained(tmp_path / "one", selected_adapters=["other"])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["other"]
    fresh = lorakit.load_adapter(tiny_llama(), tmp_path / "all", adapter_name="other")
    lorakit.set_adapter(model, "other")
    torch.testing.assert_close(logits(fresh, ids), logits(model, ids))


def test_save_pretrained_refuses_what_it_cannot_write(tmp_path) -> None:
    model = _lora_model(tiny_llama())
    with pytest.raises(LorakitError, match="no adapter named 'nope'"):
        model.save_pretrained(tmp_path / "a", selected_adapters=["nope"])
    with pytest.raises(LorakitError, match="safetensors"):
        model.save_pretrained(tmp_path / "b", safe_serialization=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unload_gives_back_the_class_save_pretrained(tmp_path) -> None:
    base = tiny_llama()
    model = _lora_model(base)
    assert "save_pretrained" in model.__dict__
    plain = lorakit.merge_and_unload(model)
    assert "save_pretrained" not in plain.__dict__
    plain.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


def test_trainer_save_model_reloads_in_peft_and_lorakit(tmp_path) -> None:
    from peft import PeftModel

    base, ids = tiny_llama(), token_ids()
    model = _lora_model(base)
    trainer = _trainer(model, tmp_path / "run", max_steps=3)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    expected = logits(model.eval(), ids)
    assert not torch.allclose(logits(base, ids), expected)
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_llama(), tmp_path / "final"), ids), expected)
    torch.testing.assert_close(logits(lorakit.load_adapter(tiny_llama(), tmp_path / "final"), ids), expected)


def test_trainer_checkpoint_is_an_adapter_and_resume_ends_like_an_uninterrupted_run(tmp_path) -> None:
    """Proves: checkpoint-2/ holds a loadable adapter with the step-2 weights, and a run resumed from it ends with
    the same adapter (bit for bit on CPU) as the run that was not interrupted."""
    base = tiny_llama()
    full = _lora_model(base)
    _trainer(full, tmp_path / "full", max_steps=4, save_steps=2).train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    at_step_2 = lorakit.load_adapter(tiny_llama(), checkpoint)  # the checkpoint is a PEFT adapter
    assert not torch.equal(_adapter_tensors(at_step_2)[next(iter(_adapter_tensors(full)))],
                           _adapter_tensors(full)[next(iter(_adapter_tensors(full)))])

    resumed = _lora_model(base)  # the same start; resume must replace its weights with step 2's
    trainer = _trainer(resumed, tmp_path / "full", max_steps=4, save_steps=2)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    final, reference = _adapter_tensors(resumed), _adapter_tensors(full)
    assert final.keys() == reference.keys()
    for key in final:
        torch.testing.assert_close(final[key], reference[key], rtol=0, atol=0)


def test_resume_loads_the_checkpoint_adapter_weights(tmp_path) -> None:
    """Resuming with zero steps left: the model then holds exactly the checkpoint's adapter tensors."""
    base = tiny_llama()
    trained = _lora_model(base)
    _trainer(trained, tmp_path / "run", max_steps=2, save_steps=2).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = load_file(checkpoint / "adapter_model.safetensors")
    fresh = _lora_model(base)
    assert not all(torch.equal(saved[k], v) for k, v in _adapter_tensors(fresh).items())
    _trainer(fresh, tmp_path / "run", max_steps=2, save_steps=2).train(resume_from_checkpoint=str(checkpoint))
    for key, value in _adapter_tensors(fresh).items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)


def test_load_best_model_at_end_restores_the_best_checkpoints_adapter(tmp_path) -> None:
    from transformers import Trainer, TrainingArguments

    model = _lora_model(tiny_llama())
    data = [{"input_ids": ids, "labels": ids} for ids in token_ids(batch=8, seq=6, seed=3)]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2, use_cpu=True,
        report_to=[], save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
        load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True,  # the worse one: step 2
        disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:2])
    trainer.train()
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-2"
    best = load_file(Path(trainer.state.best_model_checkpoint) / "adapter_model.safetensors")
    final = load_file(tmp_path / "checkpoint-4" / "adapter_model.safetensors")
    assert not all(torch.equal(best[k], final[k]) for k in best)
    for key, value in _adapter_tensors(model).items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)
