"""quantize_model and friends, against independent references: a hand-written NF4 / int8 quantizer, the model's
full-precision weights, and the plain nn.Linear formula."""

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

bnb = pytest.importorskip("bitsandbytes")

import lorakit  # noqa: E402
from lorakit.errors import ConfigError  # noqa: E402
from lorakit.layers.quantized import cpu_4bit_kernel_is_wrong, dequantize_weight  # noqa: E402
from lorakit.quantize import (  # noqa: E402
    QuantConfig,
    dequantize_model,
    import_bitsandbytes,
    prepare_model,
    quantization_of,
    quantize_model,
    quantized_bytes,
    quantized_layers,
)
from tests.helpers import logits, tiny_bert_seq_cls, tiny_llama, token_ids  # noqa: E402

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WIDE = dict(hidden_size=64, intermediate_size=128)  # in_features multiples of the blocksize (see the CPU-bug test)


def llama():
    return tiny_llama(**WIDE)


def reference_nf4(weight: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """Blockwise absmax NF4 written from the QLoRA paper: each block of the flattened W is scaled by its absmax and
    every value rounded to the nearest of the 16 NF4 levels (the levels are the published constants)."""
    levels = bnb.functional.get_4bit_type("nf4", device="cpu")
    flat = weight.reshape(-1)
    pad = (-flat.numel()) % blocksize
    blocks = F.pad(flat, (0, pad)).reshape(-1, blocksize)
    absmax = blocks.abs().amax(1, keepdim=True)
    nearest = (blocks / absmax).unsqueeze(-1).sub(levels).abs().argmin(-1)
    return (levels[nearest] * absmax).reshape(-1)[: flat.numel()].reshape(weight.shape)


@pytest.mark.parametrize("method, kind", [("nf4", "Linear4bit"), ("fp4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_every_linear_but_the_head_is_quantized(method: str, kind: str) -> None:
    model = quantize_model(llama(), method)
    layers = dict(quantized_layers(model))
    assert len(layers) == 2 * len(LINEAR_NAMES)
    assert {type(m).__name__ for m in layers.values()} == {kind}
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert type(model.model.embed_tokens) is nn.Embedding
    assert quantization_of(model).method == method


def test_options_reach_the_layers() -> None:
    model = quantize_model(llama(), "fp4", compute_dtype="bf16", double_quant=False)
    layer = model.model.layers[0].mlp.down_proj
    assert layer.compute_dtype == torch.bfloat16
    assert layer.weight.quant_type == "fp4" and layer.weight.quant_state.nested is False
    assert quantize_model(llama(), "nf4").model.layers[0].mlp.down_proj.weight.quant_state.nested is True


def test_classification_head_and_skip_modules_stay_full_precision() -> None:
    model = quantize_model(tiny_bert_seq_cls(**WIDE), "nf4")
    assert type(model.classifier) is nn.Linear
    assert type(model.bert.encoder.layer[0].attention.self.query).__name__ == "Linear4bit"
    model = quantize_model(llama(), "nf4", skip_modules=["down_proj"])
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear
    assert type(model.model.layers[1].mlp.up_proj).__name__ == "Linear4bit"


def test_nf4_weight_equals_a_reference_quantizer() -> None:
    model = llama()
    weight = model.model.layers[0].mlp.up_proj.weight.detach().clone()  # (128, 64)
    quantize_model(model, "nf4", double_quant=False)  # exact fp32 block scales: comparable bit for bit
    torch.testing.assert_close(dequantize_weight(model.model.layers[0].mlp.up_proj), reference_nf4(weight))


def test_int8_weight_equals_per_row_absmax_rounding() -> None:
    model = llama()
    weight = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    quantize_model(model, "int8")
    half = weight.half().float()  # bitsandbytes quantizes from fp16
    scale = half.abs().amax(1, keepdim=True)
    expected = torch.round(half * 127 / scale) * (scale / 127)
    torch.testing.assert_close(dequantize_weight(model.model.layers[0].mlp.up_proj), expected)


@pytest.mark.parametrize("method", ["nf4", "fp4", "int8"])
@pytest.mark.parametrize("training", [True, False])
def test_quantized_layer_computes_with_its_dequantized_weight(method: str, training: bool) -> None:
    linear = nn.Linear(64, 24)  # 24 outputs: not a multiple of 32, which bitsandbytes' CPU eval path rejects
    model = quantize_model(nn.Sequential(linear), method)
    layer = model[0].train(training)
    x = torch.randn(5, 64)
    with torch.no_grad():
        out = layer(x)
    expected = F.linear(x, dequantize_weight(layer), layer.bias)
    if method == "int8" and not training:  # LLM.int8 inference also rounds the activations to int8 per row
        torch.testing.assert_close(out, expected, atol=0.05, rtol=0.05)
    else:
        torch.testing.assert_close(out, expected)


def test_bf16_compute_dtype_runs_the_matmul_in_bf16() -> None:
    model = quantize_model(nn.Sequential(nn.Linear(64, 32)), "nf4", compute_dtype=torch.bfloat16)
    layer, x = model[0], torch.randn(4, 64)
    out = layer(x)
    expected = F.linear(x.bfloat16(), dequantize_weight(layer).bfloat16(), layer.bias.bfloat16())
    assert out.dtype == torch.float32  # returned in the input's dtype
    torch.testing.assert_close(out, expected.float())


def test_model_output_stays_close_to_full_precision() -> None:
    model, ids = llama(), token_ids()
    reference = logits(model, ids)
    quantize_model(model, "nf4")
    error = (logits(model, ids) - reference).abs()
    assert 0 < error.max() < 0.25 * reference.abs().max()  # 4 bits change the logits, but not wholesale


def test_double_quant_bytes_per_parameter() -> None:
    model = quantize_model(nn.Sequential(nn.Linear(1024, 1024, bias=False)), "nf4", double_quant=True)
    nbytes, params = quantized_bytes(model)
    assert params == 1024 * 1024
    assert nbytes / params <= 0.52
    model = quantize_model(nn.Sequential(nn.Linear(1024, 1024, bias=False)), "nf4", double_quant=False)
    nbytes, _ = quantized_bytes(model)
    assert nbytes / params == pytest.approx(0.5 + 4 / 64, abs=1e-3)  # 4 bits + one fp32 scale per 64 weights


def test_count_parameters_counts_packed_weights_as_their_parameters() -> None:
    model = llama()
    _, total = lorakit.count_parameters(model)
    quantize_model(model, "nf4")
    assert lorakit.count_parameters(model)[1] == total


def test_dequantize_model_is_exact() -> None:
    model, ids = quantize_model(llama(), "nf4"), token_ids()
    before = logits(model, ids)
    dequantize_model(model)
    assert not quantized_layers(model) and quantization_of(model) is None
    torch.testing.assert_close(logits(model, ids), before)


def test_bad_values_name_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'nf5'.*\['nf4', 'fp4', 'int8'\]"):
        quantize_model(llama(), "nf5")
    with pytest.raises(ConfigError, match="compute_dtype='half-ish'"):
        QuantConfig(compute_dtype="half-ish")
    with pytest.raises(ConfigError, match=r"no nn\.Linear"):
        quantize_model(nn.Sequential(nn.Embedding(4, 4)), "nf4")


def test_refuses_a_model_with_adapters_or_already_quantized() -> None:
    model = llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="quantize the base model first"):
        quantize_model(model, "nf4")
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(quantize_model(llama(), "nf4"), "nf4")


def test_missing_bitsandbytes_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        import_bitsandbytes()


def test_layers_the_cpu_kernel_gets_wrong_stay_full_precision() -> None:
    # bitsandbytes 0.50's CPU kernel mis-reads block scales for rows of 40 (not a multiple of 64); if a fixed
    # version is installed, the layer is quantized and must then compute with the reference NF4 weight
    linear = nn.Linear(40, 16)
    weight = linear.weight.detach().clone()
    if cpu_4bit_kernel_is_wrong(40, 64, torch.device("cpu")):
        with pytest.warns(UserWarning, match="kept 1 linear layer"):
            model = quantize_model(nn.Sequential(linear, nn.Linear(64, 16)), "nf4", double_quant=False)
        assert model[0] is linear and type(model[1]).__name__ == "Linear4bit"
    else:
        model = quantize_model(nn.Sequential(linear), "nf4", double_quant=False)
        torch.testing.assert_close(dequantize_weight(model[0]), reference_nf4(weight))


def test_transformers_4bit_model_is_read_and_prepared(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama().save_pretrained(tmp_path)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config, device_map="cpu")
    found = quantization_of(model)
    assert (found.method, found.double_quant) == ("fp4", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_model(model)
    warned = any("compute with wrong weights on CPU" in str(w.message) for w in caught)
    assert warned == cpu_4bit_kernel_is_wrong(32, 64, torch.device("cpu"))  # hidden size 32 < blocksize 64
    assert logits(model, token_ids()).isfinite().all()  # bitsandbytes' CPU eval path would crash here otherwise


def test_transformers_4bit_model_counts_its_packed_weights_before_any_adapter(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import lorakit

    full = tiny_llama(hidden_size=64, intermediate_size=128)
    full.save_pretrained(tmp_path)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config, device_map="cpu")
    assert lorakit.count_parameters(model)[1] == sum(p.numel() for p in full.parameters())


def test_quantize_model_is_reachable_from_the_package() -> None:
    import lorakit
    from lorakit.merge_report import merge_with_report
    from lorakit.quantize import quantize_model

    assert lorakit.quantize_model is quantize_model and lorakit.merge_with_report is merge_with_report
