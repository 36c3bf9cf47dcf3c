"""The merge equivalence report: its numbers against hand-computed ones, and merge_with_report on full-precision,
dequantized and requantized bases."""

import math

import pytest
import torch
from torch import nn

import lorakit
from lorakit import quantize
from lorakit.errors import ConfigError
from lorakit.inject import lora_layers
from lorakit.merge_report import MergeReport, compare_logits, merge_with_report, model_logits
from tests.helpers import tiny_llama, token_ids

WIDE = dict(hidden_size=64, intermediate_size=128)


def adapted(model: nn.Module) -> nn.Module:
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return lorakit.add_adapter(model, config)


def test_identical_logits_give_zeros() -> None:
    logits = torch.randn(2, 5, 11)
    report = compare_logits(logits, logits.clone())
    assert (report.max_abs_diff, report.mean_abs_diff, report.kl_mean, report.kl_max) == (0, 0, 0, 0)
    assert report.positions == 10


def test_a_constant_shift_moves_the_logits_but_not_the_distribution() -> None:
    logits = torch.randn(4, 7)
    report = compare_logits(logits, logits + 0.5)
    assert report.max_abs_diff == pytest.approx(0.5) and report.mean_abs_diff == pytest.approx(0.5)
    assert report.kl_max == pytest.approx(0, abs=1e-12)  # softmax is shift-invariant


def test_kl_matches_the_two_class_formula() -> None:
    reference, candidate = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 2.0]])
    p = torch.softmax(reference[0].double(), 0)
    q = torch.softmax(candidate[0].double(), 0)
    expected = sum(p[i] * math.log(p[i] / q[i]) for i in range(2))
    assert compare_logits(reference, candidate).kl_mean == pytest.approx(float(expected))


def test_table_names_what_was_compared() -> None:
    report = MergeReport("adapter on nf4 base  vs  merged, float32", 64, 1.5e-6, 2e-7, 1e-13, 3e-13)
    table = report.table()
    assert "adapter on nf4 base  vs  merged, float32 (64 probe positions)" in table
    assert "max |Δlogit|" in table and "1.5e-06" in table and "mean KL" in table


def test_padding_positions_are_left_out() -> None:
    model = tiny_llama()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    logits = model_logits(model, {"input_ids": token_ids(seq=5), "attention_mask": mask})
    assert logits.shape == (8, model.config.vocab_size)


def test_full_precision_merge_is_exact_and_printed(capsys) -> None:
    model = adapted(tiny_llama(**WIDE))
    merged, report = merge_with_report(model)
    assert not list(lora_layers(merged))
    assert report.max_abs_diff < 1e-5 and report.kl_max < 1e-10  # float rounding only
    assert "adapter on full-precision base  vs  merged, float32" in capsys.readouterr().out


def test_bad_mode_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'fp8'.*\['dequantize', 'requantize'\]"):
        merge_with_report(adapted(tiny_llama()), mode="fp8")


@pytest.fixture
def quantized() -> nn.Module:
    pytest.importorskip("bitsandbytes")  # the report itself needs no bitsandbytes; a quantized base does
    return adapted(quantize.quantize_model(tiny_llama(**WIDE), "nf4"))


def test_dequantized_merge_is_exact(quantized: nn.Module) -> None:
    ids = {"input_ids": token_ids(batch=3, seq=6)}
    merged, report = merge_with_report(quantized, ids, verbose=False)
    assert not quantize.quantized_layers(merged) and not list(lora_layers(merged))
    assert report.positions == 18
    assert report.max_abs_diff < 1e-5 and report.kl_max < 1e-10  # the 4-bit weights are dequantized exactly


def test_requantized_merge_shows_a_small_positive_difference(quantized: nn.Module) -> None:
    ids = token_ids(batch=3, seq=6)
    before = model_logits(quantized, ids)
    merged, report = merge_with_report(quantized, ids, mode="requantize", verbose=False)
    assert len(quantize.quantized_layers(merged)) == 14 and not list(lora_layers(merged))
    after = model_logits(merged, ids)
    assert report.max_abs_diff == pytest.approx((after - before).abs().max().item())
    assert 1e-4 < report.max_abs_diff < 0.5 * before.abs().max()
    assert 0 < report.kl_mean < 0.05
    assert "requantized to nf4" in report.label


def test_bf16_save_mode_casts_the_merged_model(quantized: nn.Module) -> None:
    merged, report = merge_with_report(quantized, dtype=torch.bfloat16, verbose=False)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert 0 < report.max_abs_diff < 0.1  # bf16 rounding of weights and activations
