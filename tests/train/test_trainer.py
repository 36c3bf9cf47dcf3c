"""The training loop on tiny random models: it learns, it writes its outputs, batches split any way agree,
hooks are called as documented, a non-finite loss stops the run cleanly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lorakit.train.hooks import TrainHook
from lorakit.train.metrics import read_metrics
from lorakit.train.run import train
from lorakit.train.trainer import NonFiniteLossError, Trainer
from tests.train.runs import config_of, make_run


def train_losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


def adapter_tensors(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


@pytest.mark.parametrize("kind", ["causal", "seq2seq", "cls"])
def test_a_few_steps_lower_the_eval_loss(tmp_path, kind):
    cfg = config_of(make_run(tmp_path, kind), "training.max_steps=16", "training.lr=5e-2")
    trainer = Trainer(cfg)
    before = trainer.evaluate()["loss"]  # B = 0: the base model's loss
    after = trainer.train().final_eval["loss"]
    assert after < before - 0.01, (before, after)


def test_output_directory_holds_adapter_config_metrics_plot_and_summary(tmp_path):
    cfg = config_of(make_run(tmp_path, "cls"), "output.plot=true", "training.eval_every=3")
    result = train(cfg)
    out = result.output_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.yaml", "metrics.jsonl",
                 "curves.png", "summary.json", "best/adapter_config.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["adapter_bytes"] == sum((out / n).stat().st_size for n in ("adapter_config.json",
                                                                              "adapter_model.safetensors"))
    assert summary["peak_rss_mb"] > 0
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    assert {"loss", "accuracy", "f1"} <= set(evals[0])
    # the classification head is trained and saved with the adapter (modules_to_save)
    assert any(k.endswith("classifier.weight") for k in adapter_tensors(out))


def test_resolved_config_rebuilds_the_same_run(tmp_path):
    out = train(config_of(make_run(tmp_path, "causal"), "training.max_steps=2")).output_dir
    again = config_of(out / "train_config.yaml", f"output.dir={tmp_path / 'again'}")
    second = train(again).output_dir
    first, other = adapter_tensors(out), adapter_tensors(second)
    assert first.keys() == other.keys()
    assert all(torch.equal(first[k], other[k]) for k in first)


def test_gradient_accumulation_matches_one_bigger_batch(tmp_path):
    path = make_run(tmp_path, "causal")
    big = train(config_of(path, "training.batch_size=4", f"output.dir={tmp_path / 'big'}")).output_dir
    accum = train(config_of(path, "training.batch_size=2", "training.grad_accum=2",
                            f"output.dir={tmp_path / 'accum'}")).output_dir
    # same examples per step, different padding / summation order: equal up to float32 rounding
    torch.testing.assert_close(torch.tensor(train_losses(accum)), torch.tensor(train_losses(big)))
    a, b = adapter_tensors(accum), adapter_tensors(big)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


class Recorder(TrainHook):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.saw_grad = False

    def extra_loss(self, model, step):
        self.calls.append(("extra_loss", step))
        return None

    def on_backward_end(self, model, step):
        self.calls.append(("on_backward_end", step))
        self.saw_grad = any(p.grad is not None for p in model.parameters() if p.requires_grad)

    def on_step_end(self, model, step):
        self.calls.append(("on_step_end", step))


def test_hooks_are_called_in_the_documented_order(tmp_path):
    hook = Recorder()
    train(config_of(make_run(tmp_path, "causal"), "training.max_steps=2", "training.grad_accum=2"), hooks=[hook])
    per_step = ["extra_loss", "extra_loss", "on_backward_end", "on_step_end"]  # extra_loss once per micro-batch
    assert hook.calls == [(c, 0) for c in per_step] + [(c, 1) for c in per_step]
    assert hook.saw_grad


class L2OnB(TrainHook):
    """An extra loss that pulls lora_B towards 0: with a huge weight B stays near 0."""

    def extra_loss(self, model, step):
        return 1e3 * sum(p.pow(2).sum() for n, p in model.named_parameters() if "lora_B" in n)


def test_extra_loss_of_a_hook_is_trained(tmp_path):
    path = make_run(tmp_path, "causal")
    free = adapter_tensors(train(config_of(path, f"output.dir={tmp_path / 'free'}")).output_dir)
    held = adapter_tensors(train(config_of(path, f"output.dir={tmp_path / 'held'}"), hooks=[L2OnB()]).output_dir)
    b_norm = lambda ts: sum(t.norm() for k, t in ts.items() if "lora_B" in k)  # noqa: E731
    assert b_norm(held) < 0.2 * b_norm(free)


class PoisonAt(TrainHook):
    def __init__(self, step: int) -> None:
        self.step = step

    def extra_loss(self, model, step):
        return torch.tensor(float("nan")) if step == self.step else None


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config_of(make_run(tmp_path, "causal"), "training.save_every=2", "training.max_steps=10")
    trainer = Trainer(cfg, hooks=[PoisonAt(step=4)])  # the 5th step
    with pytest.raises(NonFiniteLossError, match=r"step 5: the loss is nan.*step-00000004"):
        trainer.train()
    out = cfg.output.dir
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002", "step-00000004"], out
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()  # no final adapter from a broken run
    # the weights in memory are those of step 4: the poisoned step did not reach the optimizer
    saved = load_file(str(tmp_path / "out" / "checkpoints" / "step-00000004" / "trainable.safetensors"))
    live = dict(trainer.raw.named_parameters())
    assert all(torch.equal(saved[k], live[k].detach()) for k in saved)


def test_early_stopping_stops_after_patience_evaluations(tmp_path):
    # lr 0 after step 0 (constant schedule, lr tiny): the eval metric never improves after the first eval
    cfg = config_of(make_run(tmp_path, "cls"), "training.lr=1e-12", "training.eval_every=1",
                    "training.early_stopping_patience=2", "training.max_steps=20", "training.metric=loss")
    result = train(cfg)
    assert result.summary["stopped_early"]
    assert result.summary["steps"] < 20


def test_gradient_checkpointing_changes_memory_not_results(tmp_path):
    path = make_run(tmp_path, "causal")
    plain = train(config_of(path, f"output.dir={tmp_path / 'plain'}")).output_dir
    checkpointed = train(config_of(path, "model.gradient_checkpointing=true",
                                   f"output.dir={tmp_path / 'ckpt'}")).output_dir
    torch.testing.assert_close(torch.tensor(train_losses(checkpointed)), torch.tensor(train_losses(plain)))
    a, b = adapter_tensors(checkpointed), adapter_tensors(plain)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_bf16_autocast_runs_on_cpu(tmp_path):
    result = train(config_of(make_run(tmp_path, "causal"), "training.mixed_precision=bf16", "training.max_steps=3"))
    assert all(math.isfinite(loss) for loss in train_losses(result.output_dir))
    assert adapter_tensors(result.output_dir)["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].dtype \
        == torch.float32  # autocast computes in bf16; the adapter weights stay fp32


def test_the_trained_adapter_loads_in_peft_with_the_same_logits(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    import lorakit

    out = train(config_of(make_run(tmp_path, "causal"), "training.lr=5e-2")).output_dir
    ids = torch.tensor([[5, 9, 17, 33, 2, 40]])
    ours = lorakit.load_adapter(AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-llama"), out)
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-llama"), out)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-llama")(ids).logits
        expected = ours(ids).logits
        assert not torch.allclose(expected, base)  # training moved the adapter away from a no-op
        torch.testing.assert_close(theirs(ids).logits, expected)
