"""Trainable-parameter counts against the LoRA arithmetic: r * (in + out) per adapted layer."""

import torch

import lorakit
from tests.helpers import tiny_bert_seq_cls, tiny_gpt2, tiny_llama


def llama_7b_on_meta():
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):  # no memory: shapes only
        return LlamaForCausalLM(LlamaConfig())


def test_llama_7b_shape_r8_q_v_is_4194304_trainable() -> None:
    model = llama_7b_on_meta()
    _, total_before = lorakit.count_parameters(model)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    trainable, total = lorakit.count_parameters(model)
    assert trainable == 32 * 2 * 8 * (4096 + 4096) == 4_194_304
    assert total == total_before + trainable == 6_742_609_920


def test_print_trainable_parameters_format(capsys) -> None:
    model = llama_7b_on_meta()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    line = lorakit.print_trainable_parameters(model)
    expected = "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"
    assert line == expected
    assert capsys.readouterr().out == expected + "\n"


def test_gpt2_c_attn() -> None:
    model = tiny_gpt2()  # c_attn: Conv1D 32 -> 96, two blocks
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["c_attn"]))
    assert lorakit.count_parameters(model)[0] == 2 * 4 * (32 + 96)


def test_all_linear_on_tiny_llama() -> None:
    model = tiny_llama()  # hidden 32, mlp 64, 4 heads of 8, 2 kv heads: k/v project 32 -> 16
    in_out = {"q": (32, 32), "k": (32, 16), "v": (32, 16), "o": (32, 32), "gate": (32, 64), "up": (32, 64),
              "down": (64, 32)}
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules="all-linear"))
    assert lorakit.count_parameters(model)[0] == 2 * sum(2 * (i + o) for i, o in in_out.values())


def test_embedding_is_r_times_num_plus_dim() -> None:
    model = tiny_llama()  # embed_tokens: 128 x 32
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["embed_tokens"]))
    assert lorakit.count_parameters(model)[0] == 4 * (128 + 32)


def test_rank_pattern_changes_the_count() -> None:
    model = tiny_llama()
    cfg = lorakit.LoraConfig(r=4, target_modules=["q_proj"], rank_pattern={r"layers\.0\.self_attn\.q_proj": 1})
    lorakit.add_adapter(model, cfg)
    assert lorakit.count_parameters(model)[0] == (1 + 4) * (32 + 32)


def test_modules_to_save_and_lora_bias_count() -> None:
    model = tiny_bert_seq_cls()  # classifier: Linear 32 -> 3
    cfg = lorakit.LoraConfig(r=2, target_modules=["query"], modules_to_save=["classifier"], lora_bias=True)
    _, total_before = lorakit.count_parameters(model)
    lorakit.add_adapter(model, cfg)
    trainable, total = lorakit.count_parameters(model)
    lora = 2 * (2 * (32 + 32) + 32)  # two query layers, each with a lora_B bias of 32
    head_copy = 32 * 3 + 3
    assert trainable == lora + head_copy
    assert total == total_before + trainable  # the original head stays, frozen


def test_second_inactive_adapter_is_counted_but_frozen() -> None:
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]), "a")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"]), "b", activate=False)
    trainable, _ = lorakit.count_parameters(model)
    assert trainable == 2 * 2 * (32 + 32)
