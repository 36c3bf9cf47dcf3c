"""training.method full / probe: each run equals a plain PyTorch loop over the same batches (AdamW by hand on the
unwrapped transformers model), saves what it trained in weights.safetensors, and `lorakit eval` on the saved run
gives back the run's own metrics; data.test_file is scored once, with the final weights."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lorakit.cli.main import main
from lorakit.errors import ConfigError
from lorakit.train import state as S
from lorakit.train.data import build_datasets, collate
from lorakit.train.methods import WEIGHTS_FILE, load_weights, trained_state
from lorakit.train.run import train
from tests.train.runs import config_of, make_run

STEPS, BATCH, LR = 3, 4, 5e-3
PLAIN = {"max_steps": STEPS, "batch_size": BATCH, "lr": LR, "head_lr": 2 * LR, "max_grad_norm": None,
         "weight_decay": 0.0, "scheduler": "constant"}


def reference_run(config, method: str) -> dict[str, torch.Tensor]:
    """The same steps by hand: the model from its folder, the trainer's batches, cross-entropy, AdamW."""
    cfg = config_of(config)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    train_set, _, stats = build_datasets(cfg.data, tokenizer)
    torch.manual_seed(cfg.training.seed)  # the new head's initial weights, as the trainer draws them
    model = AutoModelForSequenceClassification.from_pretrained(cfg.model.path, num_labels=len(stats["labels"]))
    model.train()
    head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    if method == "probe":
        for p in body:
            p.requires_grad_(False)
    groups = [{"params": head, "lr": 2 * LR}] + ([{"params": body, "lr": LR}] if method == "full" else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    torch.manual_seed(cfg.training.seed)  # dropout, as the trainer reseeds once the model is built
    for step in range(STEPS):
        indices = S.step_indices(step, len(train_set), BATCH, cfg.training.seed)
        batch = collate([train_set[i] for i in indices], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        F.cross_entropy(logits, batch["label"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["full", "probe"])
def test_a_full_or_probe_run_equals_a_plain_pytorch_loop(tmp_path, method):
    config = make_run(tmp_path, "cls", training={**PLAIN, "method": method, "deterministic": True})
    result = train(config_of(config))
    saved = load_file(str(result.output_dir / WEIGHTS_FILE))
    expected = reference_run(config, method)
    if method == "probe":
        assert sorted(saved) == ["classifier.bias", "classifier.weight"]
    else:
        assert set(saved) == set(expected)
    for key, value in saved.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)
    if method == "probe":  # nothing but the head moved
        base = AutoModelForSequenceClassification.from_pretrained(config_of(config).model.path, num_labels=2)
        for key, value in base.state_dict().items():
            if not key.startswith("classifier."):
                assert torch.equal(value, expected[key]), key
    summary = result.summary
    heads = 2 * 32 + 2  # tiny bert: hidden 32, two labels
    assert summary["method"] == method
    if method == "probe":
        assert summary["trainable_params"] == heads
    else:
        assert summary["trainable_params"] == summary["total_params"]
    assert summary["adapter_bytes"] == (result.output_dir / WEIGHTS_FILE).stat().st_size
    assert not (result.output_dir / "adapter_config.json").exists()


def test_eval_of_a_saved_full_run_gives_its_final_metrics(tmp_path, capsys):
    config = make_run(tmp_path, "cls", training={**PLAIN, "method": "full"})
    result = train(config_of(config))
    capsys.readouterr()
    assert main(["eval", str(result.output_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(result.final_eval["accuracy"])
    assert metrics["loss"] == pytest.approx(result.final_eval["loss"], rel=1e-5)


def test_test_file_is_scored_once_with_the_final_weights(tmp_path, capsys):
    config = make_run(tmp_path, "cls", training={**PLAIN, "method": "lora"})
    cfg = config_of(config)
    test_file = tmp_path / "cls-val.jsonl"  # the validation rows again: both scores must then agree
    result = train(config_of(config, f"data.test_file={test_file}", "output.save_best=false"))
    assert result.summary["test_eval"] == pytest.approx(result.final_eval)
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "test"] == [cfg.training.max_steps]
    capsys.readouterr()
    assert main(["eval", str(result.output_dir), "--data", str(test_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result.summary["test_eval"]["accuracy"])


def test_full_run_resumes_to_the_same_weights(tmp_path):
    settings = {**PLAIN, "method": "full", "max_steps": 4, "save_every": 2}
    config = make_run(tmp_path, "cls", training=settings)
    straight = train(config_of(config, f"output.dir={tmp_path / 'straight'}")).output_dir
    half = tmp_path / "half"
    train(config_of(config, f"output.dir={half}", "training.max_steps=2"))
    assert not (half / "checkpoints" / "step-00000002" / "adapter").exists()
    train(config_of(config, f"output.dir={half}"), resume=True)
    a, b = load_file(str(straight / WEIGHTS_FILE)), load_file(str(half / WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tied_weights_are_saved_once_and_load_back_into_both_names():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    state = trained_state(model, "full")
    assert list(state) == ["embed.weight"]


def test_load_weights_refuses_a_file_for_another_model(tmp_path):
    config = make_run(tmp_path, "cls", training={**PLAIN, "method": "probe"})
    out = train(config_of(config)).output_dir
    with safe_open(str(out / WEIGHTS_FILE), framework="pt") as handle:
        assert handle.metadata()["lorakit_method"] == "probe"
    other = AutoModelForSequenceClassification.from_pretrained(config_of(config).model.path, num_labels=3)
    with pytest.raises(ConfigError, match=r"classifier\.\w+ is \(2"):
        load_weights(other, out)


@pytest.mark.parametrize(("overrides", "message"), [
    (["training.method=probe", "model.task=causal-lm"], "training.method=probe trains a classification head"),
    (["training.method=full", "model.quantization=nf4"], "would freeze in 4/8 bits"),
    (["training.method=full", "delta_lora.start_step=1"],
     r"no adapter for the variant section\(s\) \['delta_lora'\]"),
    (["training.method=adapters"], r"training.method='adapters': expected one of \['lora', 'full', 'probe'\]"),
])
def test_combinations_that_cannot_run_are_refused_before_loading(tmp_path, overrides, message):
    config = make_run(tmp_path, "cls")
    with pytest.raises(ConfigError, match=message):
        config_of(config, *overrides)
