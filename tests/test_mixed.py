"""Mixed-adapter batches: every row equals the same row run alone with its adapter (and PEFT's adapter_names)."""

from __future__ import annotations

import copy

import pytest
import torch

import lorakit
from lorakit.errors import AdapterError
from lorakit.layers.base import LoraLayer
from tests.helpers import TinyConvNet, conv_input, logits, tiny_gpt2, tiny_llama, token_ids


def _adapters(model, *, dora: bool = False, embed: bool = False):
    """Three adapters of different ranks and targets (random B, so none is a no-op)."""
    targets_a = "all-linear" if not embed else ["embed_tokens", "q_proj", "down_proj"]
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets_a,
                                                  init_lora_weights=False), "a")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, use_rslora=True), "b")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=2, target_modules="all-linear",
                                                  init_lora_weights=False, use_dora=dora), "c")
    return model


def _alone(model, ids: torch.Tensor, row: int, adapter) -> torch.Tensor:
    """Row `row` run by itself through the ordinary forward with its adapter active (or disabled)."""
    if adapter is None:
        with lorakit.disable_adapters(model):
            return logits(model, ids[row:row + 1])
    lorakit.set_adapter(model, adapter)
    return logits(model, ids[row:row + 1])


def assert_rows_alone(model, ids: torch.Tensor, rows, mixed: torch.Tensor) -> None:
    """Every row of a mixed output equals that row run alone with its adapter."""
    for i, adapter in enumerate(rows):
        torch.testing.assert_close(mixed[i:i + 1], _alone(model, ids, i, adapter))


@pytest.mark.parametrize("dora", [False, True])
def test_each_row_equals_the_row_alone(dora):
    model = _adapters(tiny_llama(), dora=dora)
    rows = ["a", None, "b", "c", "a", "c"]
    ids = token_ids(len(rows), 9)
    with torch.no_grad(), lorakit.mixed_adapters(model, rows):
        mixed = model(ids).logits
    assert_rows_alone(model, ids, rows, mixed)


def test_one_adapter_for_every_row_is_the_plain_forward():
    model = _adapters(tiny_llama())
    ids = token_ids(3, 5)
    with torch.no_grad(), lorakit.mixed_adapters(model, ["b"] * 3):
        mixed = model(ids).logits
    lorakit.set_adapter(model, "b")
    torch.testing.assert_close(mixed, logits(model, ids))


def test_matches_peft_adapter_names(tmp_path):
    from peft import PeftModel

    base = tiny_llama()
    model = _adapters(copy.deepcopy(base))
    for name in ("a", "b", "c"):
        lorakit.save_adapter(model, tmp_path, name)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "a", adapter_name="a")
    for name in ("b", "c"):
        peft_model.load_adapter(tmp_path / name, adapter_name=name)
    rows = ["c", "a", None, "b", "a"]
    ids = token_ids(len(rows), 8)
    with torch.no_grad():
        reference = peft_model(ids, adapter_names=[r or "__base__" for r in rows]).logits
        with lorakit.mixed_adapters(model, rows):
            mixed = model(ids).logits
    torch.testing.assert_close(mixed, reference)


def test_weighted_rows_are_the_sum_of_adapter_outputs():
    model = _adapters(tiny_llama())
    ids = token_ids(2, 6)
    with torch.no_grad(), lorakit.mixed_adapters(model, [[("a", 0.7), ("b", -1.5)], {"c": 2.0}]):
        mixed = model(ids).logits
    # reference: the ordinary forward with both adapters active sums their outputs; scale each by its weight
    for _, layer in lorakit.inject.lora_layers(model):
        for name, weight in (("a", 0.7), ("b", -1.5), ("c", 2.0)):
            if name in layer.r:
                layer.set_scale(name, layer.scaling[name] * weight)
    lorakit.set_adapter(model, ["a", "b"])
    torch.testing.assert_close(mixed[:1], logits(model, ids[:1]))
    lorakit.set_adapter(model, "c")
    torch.testing.assert_close(mixed[1:], logits(model, ids[1:]))


def test_generate_rows_equal_rows_generated_alone():
    model = _adapters(tiny_llama())
    rows = ["b", None, "a", "c"]
    ids = token_ids(len(rows), 5)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad(), lorakit.mixed_adapters(model, rows):
        mixed = model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
    for i, adapter in enumerate(rows):
        if adapter is None:
            with lorakit.disable_adapters(model):
                alone = model.generate(ids[i:i + 1], attention_mask=torch.ones_like(ids[i:i + 1]), **settings)
        else:
            lorakit.set_adapter(model, adapter)
            alone = model.generate(ids[i:i + 1], attention_mask=torch.ones_like(ids[i:i + 1]), **settings)
        assert mixed[i].tolist() == alone[0].tolist(), f"row {i} ({adapter})"


def test_generate_expanded_batches_keep_each_rows_adapter():
    """num_beams copies every row in place: the copies must keep the row's adapter."""
    model = _adapters(tiny_llama())
    rows = ["a", "c"]
    ids = token_ids(len(rows), 5)
    settings = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0)
    with torch.no_grad(), lorakit.mixed_adapters(model, rows):
        mixed = model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
    for i, adapter in enumerate(rows):
        lorakit.set_adapter(model, adapter)
        alone = model.generate(ids[i:i + 1], attention_mask=torch.ones_like(ids[i:i + 1]), **settings)
        assert mixed[2 * i:2 * i + 2].tolist() == alone.tolist()


def test_embedding_adapters_mix_per_row():
    model = _adapters(tiny_llama(), embed=True)
    rows = [None, "a", "b", "a"]
    ids = token_ids(len(rows), 6)
    with torch.no_grad(), lorakit.mixed_adapters(model, rows):
        mixed = model(ids).logits
    assert_rows_alone(model, ids, rows, mixed)


def test_conv1d_fan_in_fan_out_layers_mix_per_row():
    model = tiny_gpt2()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], init_lora_weights=False),
                        "a")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=6, target_modules=["c_proj"], init_lora_weights=False,
                                                  use_dora=True), "b")
    rows = ["b", "a", None]
    ids = token_ids(len(rows), 6)
    with torch.no_grad(), lorakit.mixed_adapters(model, rows):
        mixed = model(ids).logits
    assert_rows_alone(model, ids, rows, mixed)


def test_convolution_layers_mix_per_row():
    model = TinyConvNet().eval()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["conv", "conv1d"], init_lora_weights=False),
                        "a")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["conv", "head"], init_lora_weights=False), "b")
    x = conv_input(batch=3)
    rows = ["b", [("a", 0.5), ("b", 0.5)], None]
    with torch.no_grad(), lorakit.mixed_adapters(model, rows):
        mixed = model(x)
    with torch.no_grad():
        lorakit.set_adapter(model, "b")
        torch.testing.assert_close(mixed[:1], model(x[:1]))
        with lorakit.disable_adapters(model):
            torch.testing.assert_close(mixed[2:], model(x[2:]))
        for _, layer in lorakit.inject.lora_layers(model):  # reference for row 1: both active at half scale
            for name in layer.r:
                layer.set_scale(name, layer.scaling[name] * 0.5)
        lorakit.set_adapter(model, ["a", "b"])
        torch.testing.assert_close(mixed[1:2], model(x[1:2]))


def test_per_forward_gather_equals_cached_rows():
    model = _adapters(tiny_llama(), dora=True)
    rows = ["a", [("b", 0.3), ("c", 1.0)], None, "c"]
    ids = token_ids(len(rows), 5)
    with torch.no_grad():
        with lorakit.mixed_adapters(model, rows):
            cached = model(ids).logits
        with lorakit.mixed_adapters(model, rows, row_cache_bytes=0):
            gathered = model(ids).logits
    torch.testing.assert_close(cached, gathered)


def test_bf16_base_rows_match_alone():
    model = _adapters(tiny_llama().to(torch.bfloat16))
    rows = ["a", "b", None]
    ids = token_ids(len(rows), 5)
    with torch.no_grad(), lorakit.mixed_adapters(model, rows):
        mixed = model(ids).logits.float()
    for i, adapter in enumerate(rows):
        # bf16 matmuls of a batch of 3 and of 1 round differently: bf16's own resolution
        torch.testing.assert_close(mixed[i:i + 1], _alone(model, ids, i, adapter).float(), atol=2e-2, rtol=2e-2)


def test_plan_is_cleared_and_active_adapters_return_after_the_block():
    model = _adapters(tiny_llama())
    lorakit.set_adapter(model, "a")
    ids = token_ids(2, 4)
    before = logits(model, ids)
    with torch.no_grad(), lorakit.mixed_adapters(model, ["b", "c"]):
        with lorakit.mixed_adapters(model, [None, None]):
            inner = model(ids).logits
        outer = model(ids).logits
    assert all(layer.mixed_rows is None for layer in model.modules() if isinstance(layer, LoraLayer))
    torch.testing.assert_close(logits(model, ids), before)
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(inner, logits(model, ids))
    assert not torch.allclose(outer, inner)


def test_mistakes_raise_clear_errors():
    model = _adapters(tiny_llama())
    ids = token_ids(2, 4)
    with pytest.raises(AdapterError, match=r"no adapter named 'zz'.*\['a', 'b', 'c'\]"):
        lorakit.mixed_adapters(model, ["a", "zz"]).__enter__()
    with pytest.raises(AdapterError, match="weight of adapter 'a' must be a finite number"):
        lorakit.mixed_adapters(model, [[("a", float("nan"))], None]).__enter__()
    with pytest.raises(AdapterError, match="3 row adapters but the batch has 2 rows"), torch.no_grad(), \
            lorakit.mixed_adapters(model, ["a", "b", None]):
        model(ids)
    with pytest.raises(AdapterError, match="adapter 'c' is trainable"), lorakit.mixed_adapters(model, ["a", "c"]):
        model(ids)
    lorakit.merge_adapter(model, ["a"])
    with pytest.raises(AdapterError, match="merged into the base weights"):
        lorakit.mixed_adapters(model, ["a", "b"]).__enter__()


@pytest.mark.parametrize("dora", [False, True])
def test_a_plan_is_reused_across_blocks_until_an_adapter_changes(dora):
    from lorakit.inject import lora_layers
    from lorakit.mixed import clear_plan_cache

    model = _adapters(tiny_llama(), dora=dora)
    rows = ["a", "c", None, "b"]
    ids = token_ids(len(rows), 7)

    def run():
        with torch.no_grad(), lorakit.mixed_adapters(model, rows) as plan:
            return plan, model(ids).logits

    first, out1 = run()
    second, out2 = run()
    assert second is first and torch.equal(out1, out2)  # same rows, nothing changed: the stacked weights reused
    with lorakit.mixed_adapters(model, ["a"] * 4) as other:
        assert other is not first  # other rows: another plan
    layer = next(layer for _, layer in lora_layers(model) if "c" in layer.r)
    with torch.no_grad():
        layer.lora_B["c"].weight.mul_(3.0)  # an in-place edit (an optimizer step, a load) must be seen
    third, out3 = run()
    assert third is not first
    assert_rows_alone(model, ids, rows, out3)
    layer.set_scale("c", 0.1)  # a scale change too
    fourth, out4 = run()
    assert fourth is not third
    assert_rows_alone(model, ids, rows, out4)
    clear_plan_cache(model)
    assert run()[0] is not fourth
