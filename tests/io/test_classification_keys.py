"""The mean-pooling classifier's adapter (the demo's) loads onto its natural base class, AutoModel, in PEFT with the
same hidden states as lorakit; its head travels in a sidecar that lorakit reads back; old files still load."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import lorakit
from lorakit.hf.adapter_model import model_config_for_adapter
from lorakit.hf.classifier import MeanPoolClassifier
from lorakit.hf.config import ModelConfig
from lorakit.hf.models import load_model
from lorakit.io.keys import PREFIX
from lorakit.train.run import train
from tests.train.runs import config_of, make_run

IDS = torch.tensor([[5, 9, 17, 33, 2, 40], [7, 7, 12, 90, 3, 1]])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A demo-like run: tiny BERT, mean pooling, LoRA on query/value plus the head, a few steps."""
    tmp = tmp_path_factory.mktemp("meanpool")
    result = train(config_of(make_run(tmp, "cls", model={"pooling": "mean"}), "training.max_steps=3",
                             "training.lr=5e-2"))
    return tmp, result.output_dir


def _wrapper(tmp, adapter=None):
    model = load_model(ModelConfig(task="seq-cls", pooling="mean"), tmp / "tiny-bert", ["cat", "dog"]).eval()
    if adapter is not None:
        lorakit.load_adapter(model, adapter)
    return model


def _hidden(encoder, ids=IDS):
    with torch.no_grad():
        return encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def test_adapter_keys_are_those_of_the_base_model(run) -> None:
    _, out = run
    keys = set(load_file(str(out / "adapter_model.safetensors")))
    assert keys and all(k.startswith(PREFIX + "encoder.layer.") for k in keys), sorted(keys)[:3]
    config = json.loads((out / "adapter_config.json").read_text())
    assert not config.get("modules_to_save")  # AutoModel has no head: PEFT would look for one


def test_peft_on_automodel_gives_lorakits_hidden_states(run) -> None:
    from peft import PeftModel

    tmp, out = run
    ours = _hidden(_wrapper(tmp, out).encoder)
    base = AutoModel.from_pretrained(tmp / "tiny-bert").eval()
    before = _hidden(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, out).eval()
    from_peft = [str(w.message) for w in caught if "/peft/" in w.filename]
    assert from_peft == []  # loading is clean: no missing / unexpected keys, no unknown config fields
    torch.testing.assert_close(_hidden(peft_model), ours)
    assert (ours - before).abs().max() > 1e-3  # the adapter does change the hidden states


def test_lorakit_reloads_adapter_and_head(run) -> None:
    tmp, out = run
    head = load_file(str(out / "adapter_head.safetensors"))
    model = _wrapper(tmp, out)
    torch.testing.assert_close(model.classifier.weight, head["classifier.weight"])
    fresh = _wrapper(tmp)
    assert not torch.equal(fresh.classifier.weight, head["classifier.weight"])  # the head did train
    on_automodel = lorakit.load_adapter(AutoModel.from_pretrained(tmp / "tiny-bert").eval(), out)
    torch.testing.assert_close(_hidden(on_automodel), _hidden(model.encoder))


def test_run_without_its_config_is_still_a_mean_pool_classifier(run, tmp_path) -> None:
    _, out = run
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_head.safetensors"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    model_cfg, labels = model_config_for_adapter(tmp_path)
    assert (model_cfg.task, model_cfg.pooling, len(labels)) == ("seq-cls", "mean", 2)


def test_old_layout_still_loads_in_lorakit(run, tmp_path, monkeypatch) -> None:
    """Files from before this layout (wrapper keys encoder.encoder..., the head inside the adapter file), written
    by today's save with the wrapper's base path switched off."""
    tmp, out = run
    model = _wrapper(tmp, out)
    with torch.no_grad():
        expected = model(IDS).logits
    with monkeypatch.context() as patched:
        patched.setattr(MeanPoolClassifier, "lorakit_base_path", None)
        lorakit.save_adapter(model, tmp_path)
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert PREFIX + "classifier.weight" in keys and any(k.startswith(PREFIX + "encoder.encoder.") for k in keys)
    reloaded = _wrapper(tmp, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, expected)


def test_head_from_another_save_is_refused(run, tmp_path) -> None:
    tmp, out = run
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    head = load_file(str(out / "adapter_head.safetensors"))
    save_file({k: v + 1 for k, v in head.items()}, str(tmp_path / "adapter_head.safetensors"))
    model = _wrapper(tmp)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(lorakit.AdapterFileError, match=r"adapter_head\.safetensors"):
        lorakit.load_adapter(model, tmp_path)
    assert lorakit.list_adapters(model) == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
