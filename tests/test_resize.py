"""lorakit.resize: each layer becomes the best rank-k approximation of s B A (checked against a dense SVD computed
here), the energy rule picks the smallest rank keeping the share, and the written adapter means the same model in
lorakit and in PEFT."""

from __future__ import annotations

import copy

import pytest
import torch

import lorakit
from lorakit.errors import ConfigError
from lorakit.inject import lora_layers
from lorakit.io.checkpoint import read_adapter, write_files
from lorakit.resize import energy_rank, resize_file, suggest_ranks, truncate
from tests.helpers import TinyConvNet, conv_input, logits, tiny_bert_seq_cls, tiny_llama, token_ids


def dense_truncation(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(best rank-k approximation, all singular values) from the full dense SVD: the independent reference."""
    u, s, vh = torch.linalg.svd(delta.detach().double(), full_matrices=False)
    return u[:, :k] @ torch.diag(s[:k]) @ vh[:k], s


@pytest.mark.parametrize("scaling", [0.7, -2.5])
def test_truncate_is_the_best_rank_k_approximation(scaling):
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 20, generator=gen), torch.randn(15, 6, generator=gen)
    delta = scaling * (b.double() @ a.double())
    for k in range(1, 7):
        new_a, new_b = truncate(a, b, scaling, k)
        assert new_a.shape == (k, 20) and new_b.shape == (15, k)
        best, s = dense_truncation(delta, k)
        torch.testing.assert_close(new_b @ new_a, best)
        error = torch.linalg.matrix_norm(delta - new_b @ new_a)  # Eckart–Young: the dropped singular values
        torch.testing.assert_close(error, s[k:].square().sum().sqrt(), atol=1e-9, rtol=1e-7)


def test_energy_rank_is_the_smallest_rank_keeping_the_share():
    spectrum = [3.0, 2.0, 1.0, 1.0]  # squares 9, 4, 1, 1 of 15: shares 0.6, 0.867, 0.933, 1.0
    assert energy_rank(spectrum, 0.6) == 1  # met exactly at k = 1
    assert energy_rank(spectrum, 0.61) == 2
    assert energy_rank(spectrum, 0.9) == 3
    assert energy_rank(spectrum, 0.95) == 4
    assert energy_rank(spectrum, 1.0) == 4
    assert energy_rank([2.0, 0.0, 0.0], 1.0) == 1  # zeros carry no energy
    assert energy_rank([0.0, 0.0], 0.5) == 1  # a zero update still needs rank 1 in a file
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ConfigError, match="energy"):
            energy_rank(spectrum, bad)


def test_suggestion_takes_the_largest_layer_rank_and_counts_sizes():
    layers = [("x.q", 4, 4 * (10 + 6), [3.0, 2.0, 1.0, 1.0]), ("x.v", 2, 2 * (10 + 6), [1.0, 0.01])]
    s = suggest_ranks(layers, 0.9)
    assert s.ranks == {"x.q": 3, "x.v": 1} and s.overall == 3
    assert s.kept["x.v"] == pytest.approx(1 / 1.0001)
    assert (s.params_now, s.params_at_overall, s.params_at_layer_ranks) == (96, 3 * 16 + 2 * 16, 4 * 16)


def saved(tmp_path, config: lorakit.LoraConfig, name: str = "adapter"):
    model = tiny_llama()
    lorakit.add_adapter(model, config)
    lorakit.save_adapter(model, tmp_path / name)
    return model, tmp_path / name


def write(tmp_path, file, rank=None, energy=None):
    config, tensors, report = resize_file(file, rank=rank, energy=energy)
    write_files(tmp_path / "out", config, tensors, {})
    return tmp_path / "out", report


def test_resized_layers_are_the_best_rank_k_of_the_originals(tmp_path):
    config = lorakit.LoraConfig(r=6, lora_alpha=5, use_rslora=True, target_modules=["q_proj", "v_proj"],
                                init_lora_weights=False, rank_pattern={"v_proj": 3}, alpha_pattern={"q_proj": 2})
    model, adapter = saved(tmp_path, config)
    out, report = write(tmp_path, read_adapter(adapter), rank=4)
    resized = tiny_llama()
    lorakit.load_adapter(resized, out)
    old = dict(lora_layers(model))
    assert {item.path: item.new_rank for item in report} == {p: min(4, layer.r["default"]) for p, layer in old.items()}
    for path, layer in lora_layers(resized):
        k = layer.r["default"]
        best, s = dense_truncation(old[path].delta_weight("default"), k)
        torch.testing.assert_close(layer.delta_weight("default").double(), best, atol=1e-6, rtol=1e-5)  # float32
        kept = s[:k].square().sum() / s.square().sum()
        assert report[[i.path for i in report].index(path)].kept == pytest.approx(float(kept))


def test_energy_gives_each_layer_its_smallest_rank(tmp_path):
    _, adapter = saved(tmp_path, lorakit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    spectra = {"model.layers.0.self_attn.q_proj": [3.0, 2.0, 1.0, 1.0], "model.layers.1.self_attn.q_proj":
               [5.0, 0.5, 0.1, 0.1]}  # at 0.9: ranks 3 and 1
    file = read_adapter(adapter)
    gen = torch.Generator().manual_seed(0)
    for path, values in spectra.items():  # B A = U diag(values) V^T with orthonormal U, V (scaling 1)
        a_key = next(k for k in file.tensors if path + ".lora_A" in k)
        a, b = file.tensors[a_key], file.tensors[a_key.replace("lora_A", "lora_B")]
        u = torch.linalg.qr(torch.randn(b.shape[0], 4, generator=gen))[0]
        v = torch.linalg.qr(torch.randn(a.shape[1], 4, generator=gen))[0]
        a.copy_(torch.diag(torch.tensor(values)) @ v.T)
        b.copy_(u)
    out, report = write(tmp_path, file, energy=0.9)
    assert {i.path: i.new_rank for i in report} == dict(zip(spectra, [3, 1], strict=True))
    written = read_adapter(out)
    assert written.config.r == 3 and written.config.rank_pattern == {r"model\.layers\.1\.self_attn\.q_proj": 1}
    assert written.config.alpha_pattern == written.config.rank_pattern and written.config.lora_alpha == 3


def test_resized_adapter_loads_in_peft_with_lorakits_outputs(tmp_path):
    from peft import PeftModel

    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                rank_pattern={"layers.1.self_attn.v_proj": 2})
    _, adapter = saved(tmp_path, config)
    out, _ = write(tmp_path, read_adapter(adapter), rank=3)  # ranks 3 and 2: the file needs rank_pattern
    assert read_adapter(out).config.rank_pattern
    ours = tiny_llama()
    lorakit.load_adapter(ours, out)
    peft = PeftModel.from_pretrained(tiny_llama(), str(out)).eval()
    ids = token_ids()
    torch.testing.assert_close(logits(peft, ids), logits(ours, ids))
    assert not torch.allclose(logits(tiny_llama(), ids), logits(ours, ids), atol=1e-3)  # the adapter does act


def test_resize_to_the_full_rank_keeps_the_outputs(tmp_path):
    config = lorakit.LoraConfig(r=4, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "down_proj"],
                                init_lora_weights=False)
    model, adapter = saved(tmp_path, config)
    out, _ = write(tmp_path, read_adapter(adapter), energy=1.0)
    resized = tiny_llama()
    lorakit.load_adapter(resized, out)
    ids = token_ids()
    torch.testing.assert_close(logits(resized, ids), logits(model, ids), atol=1e-5, rtol=1e-5)


def test_conv_layers_are_truncated_on_their_flattened_kernels(tmp_path):
    model = TinyConvNet()
    resized = copy.deepcopy(model)  # the same base, without the adapter
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["conv", "conv1d"], init_lora_weights=False))
    lorakit.save_adapter(model, tmp_path / "conv")
    out, _ = write(tmp_path, read_adapter(tmp_path / "conv"), rank=2)
    lorakit.load_adapter(resized, out)
    old = dict(lora_layers(model))
    for path, layer in lora_layers(resized):
        delta = old[path].delta_weight("default")  # (out, in, *kernel)
        best, _ = dense_truncation(delta.reshape(delta.shape[0], -1), 2)
        torch.testing.assert_close(layer.delta_weight("default").double().reshape(best.shape), best,
                                   atol=1e-6, rtol=1e-5)  # float32 factors
    assert resized(conv_input()).shape == (2, 5)


def test_modules_to_save_are_copied_unchanged(tmp_path):
    model = tiny_bert_seq_cls()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS",
                                                  init_lora_weights=False))
    with torch.no_grad():
        model.get_submodule("classifier").modules_to_save["default"].weight.add_(1.0)  # trained: not the base's
    lorakit.save_adapter(model, tmp_path / "cls")
    before = read_adapter(tmp_path / "cls")
    out, _ = write(tmp_path, before, rank=2)
    after = read_adapter(out)
    assert sorted(after.others()) == sorted(before.others()) and after.others()
    for key, tensor in before.others().items():
        torch.testing.assert_close(after.others()[key], tensor)


def test_dora_is_refused(tmp_path):
    _, adapter = saved(tmp_path, lorakit.LoraConfig(r=4, use_dora=True, target_modules=["q_proj"],
                                                    init_lora_weights=False))
    with pytest.raises(ConfigError, match=r"DoRA adapter; resize handles plain LoRA only"):
        resize_file(read_adapter(adapter), rank=2)


def test_raw_pissa_is_refused(tmp_path):
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa"))
    lorakit.save_adapter(model, tmp_path / "raw", pissa_raw=True)
    with pytest.raises(ConfigError, match="raw pissa adapter"):
        resize_file(read_adapter(tmp_path / "raw"), rank=2)
