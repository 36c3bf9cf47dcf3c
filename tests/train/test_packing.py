"""Padding-free packing without cross-talk: blocks hold whole examples with their own positions, and a packed
batch gives every example the logits and the loss it has alone (the reference: each example run by itself,
unpadded), on Llama, Qwen2 and Mistral (rotary positions) and GPT-2 (learned positions), with sdpa and eager
attention, in the one-row form flash attention gets, and in the trainer. Guards show the old packing (no position
reset, or transformers' default cache) fails these equalities, and the start-up probe refuses models that cannot
keep the examples of a block apart (Bloom's ALiBi, Mamba's recurrent state)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from lorakit.errors import ConfigError
from lorakit.train import tasks
from lorakit.train.data import IGNORE, collate, pack
from lorakit.train.metrics import read_metrics
from lorakit.train.packing import pack_examples, padded_positions
from lorakit.train.run import train
from lorakit.train.tasks import TASKS, CausalLM
from lorakit.train.trainer import Trainer
from tests.helpers import VOCAB, tiny_gpt2, tiny_llama
from tests.train.runs import config_of, make_run

TASK = CausalLM()
BLOCK = 24
SHARP = 0.2  # initializer_range: 10x the default, so attention is peaked and cross-talk moves the loss clearly


def tiny_qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                        max_position_embeddings=64, initializer_range=SHARP)).eval()


def tiny_mistral(seed: int = 0):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)  # a sliding window shorter than the block: the packed mask must combine with it
    return MistralForCausalLM(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                            max_position_embeddings=64, sliding_window=6,
                                            initializer_range=SHARP)).eval()


MODELS = {"llama": lambda: tiny_llama(initializer_range=SHARP), "qwen2": tiny_qwen2, "mistral": tiny_mistral,
          "gpt2": lambda: tiny_gpt2(initializer_range=SHARP)}


def examples(n: int = 9, seed: int = 0) -> list[dict]:
    """Causal-LM examples of 1..14 tokens: every other one trained from its first token (the text format with no
    BOS), the others with an untrained prompt (like the alpaca format's)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(1, 14)
        ids = [rng.randrange(1, VOCAB) for _ in range(length)]
        prompt = rng.randint(1, length - 1) if i % 2 and length > 1 else 0
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def alone_loss(model, example: dict) -> torch.Tensor:
    with torch.no_grad():
        return TASK.loss_sum(model, collate([example], pad_token_id=0))


def packed_loss(model, blocks: list[dict]) -> torch.Tensor:
    with torch.no_grad():
        return TASK.loss_sum(model, collate(blocks, pad_token_id=0))


def model_with(name: str, attention: str):
    model = MODELS[name]()
    model.set_attn_implementation(attention)
    return model


# -- the blocks ---------------------------------------------------------------------------------------------------
def test_blocks_hold_whole_examples_with_positions_restarting_at_each():
    data = examples(30)
    blocks = pack(data, BLOCK)
    pieces = []
    for block in blocks:
        assert 0 < len(block["input_ids"]) <= BLOCK
        assert len(block["labels"]) == len(block["position_ids"]) == len(block["input_ids"])
        assert block["attention_mask"] == [1] * len(block["input_ids"])
        starts = [i for i, p in enumerate(block["position_ids"]) if p == 0] + [len(block["input_ids"])]
        assert starts[0] == 0
        for start, end in itertools.pairwise(starts):
            assert block["position_ids"][start:end] == list(range(end - start))
            assert block["labels"][start] == IGNORE  # the previous example's last token predicts nothing here
            pieces.append((tuple(block["input_ids"][start:end]), tuple(block["labels"][start + 1:end])))
    # every example once, whole, with the labels it trains on (its first label is never a target)
    assert sorted(pieces) == sorted((tuple(e["input_ids"]), tuple(e["labels"][1:])) for e in data)
    assert sum(TASK.loss_units(b) for b in blocks) == sum(TASK.loss_units(e) for e in data)


def test_best_fit_fills_the_tightest_block_and_keeps_the_order_within_blocks():
    sizes = [6, 5, 3, 2, 4, 1]
    data = [{"input_ids": [i + 1] * n, "labels": [i + 1] * n} for i, n in enumerate(sizes)]
    blocks = pack(data, 8)
    # 6 -> A (room 2); 5 -> B (room 3); 3 -> B (0); 2 -> A (0); 4 -> C (4); 1 -> C (3)
    assert [b["input_ids"] for b in blocks] == [[1] * 6 + [4] * 2, [2] * 5 + [3] * 3, [5] * 4 + [6]]
    assert [b["position_ids"] for b in blocks][2] == [0, 1, 2, 3, 0]


def test_examples_longer_than_a_block_are_cut_counted_and_dropped_without_trained_tokens():
    data = [{"input_ids": list(range(1, 11)), "labels": [IGNORE] * 2 + list(range(3, 11))},
            {"input_ids": list(range(1, 11)), "labels": [IGNORE] * 8 + [9, 10]},  # nothing trained in the first 6
            {"input_ids": [7, 8], "labels": [7, 8]}]
    packed = pack_examples(data, 6)
    assert (packed.truncated, packed.dropped) == (2, 1)
    assert [b["input_ids"] for b in packed.blocks] == [[1, 2, 3, 4, 5, 6], [7, 8]]
    assert packed.blocks[0]["labels"] == [IGNORE, IGNORE, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="block=0"):
        pack_examples(data, 0)


def test_collate_pads_positions_by_counting_on():
    blocks = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE, 6, 7],
               "position_ids": [0, 0, 1]}, {"input_ids": [9], "attention_mask": [1], "labels": [IGNORE],
                                            "position_ids": [0]}]
    batch = collate(blocks, pad_token_id=0)
    assert batch["position_ids"].tolist() == [[0, 0, 1], [0, 1, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert padded_positions([], 2) == [0, 1]


# -- the model sees each example alone ------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(MODELS))
def test_packed_loss_is_the_sum_of_the_examples_losses_alone(name, attention):
    model = model_with(name, attention)
    data = examples()
    blocks = pack(data, BLOCK)
    assert len(blocks) > 1 and any(sum(p == 0 for p in b["position_ids"]) > 2 for b in blocks)
    assert len({len(b["input_ids"]) for b in blocks}) > 1  # the batch is padded
    expected = sum(alone_loss(model, e) for e in data)
    torch.testing.assert_close(packed_loss(model, blocks), expected)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_each_example_has_its_logits_alone_inside_a_block(name, attention):
    model = model_with(name, attention)
    data = examples()
    batch = collate(pack(data, BLOCK), pad_token_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = {tuple(e["input_ids"]): model(torch.tensor([e["input_ids"]])).logits[0] for e in data}
    found = 0
    for row, positions in enumerate(batch["position_ids"].tolist()):
        real = int(batch["attention_mask"][row].sum())
        starts = [i for i in range(real) if positions[i] == 0] + [real]
        for start, end in itertools.pairwise(starts):
            ids = tuple(batch["input_ids"][row, start:end].tolist())
            torch.testing.assert_close(logits[row, start:end], alone[ids])
            found += 1
    assert found == len(data)


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_flash_attention_gets_the_blocks_as_one_row_with_the_same_loss(name, monkeypatch):
    """Flash attention reads the position restarts in a one-row batch only, so packed blocks go to it as one row
    of their real tokens. No flash kernel on CPU: the one-row path runs here on sdpa, which reads it the same way."""
    model = model_with(name, "sdpa")
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape),
                                    with_kwargs=True)
    monkeypatch.setattr(tasks, "flattens_packed_rows", lambda model: True)
    data = examples()
    blocks = pack(data, BLOCK)
    expected = sum(alone_loss(model, e) for e in data)
    seen.clear()
    torch.testing.assert_close(packed_loss(model, blocks), expected)
    assert seen == [torch.Size([1, sum(len(b["input_ids"]) for b in blocks)])]  # one row, no padding
    TASK.check_packing(model)


def test_only_flash_attention_flattens():
    model = tiny_llama()
    assert not tasks.flattens_packed_rows(model)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape),
                                    with_kwargs=True)
    blocks = pack(examples(), BLOCK)
    packed_loss(model, blocks)
    assert seen == [torch.Size([len(blocks), max(len(b["input_ids"]) for b in blocks)])]  # sdpa: one row per block
    model.config._attn_implementation = "flash_attention_2"  # set directly: flash-attn is not installed here
    wrapped = torch.nn.Module()
    wrapped.module = model  # as DDP wraps it
    assert tasks.flattens_packed_rows(model) and tasks.flattens_packed_rows(wrapped)


def no_position_reset(batch: dict) -> dict:
    """The old packing: one long sequence per row, attention across examples, positions running on."""
    return {k: v for k, v in batch.items() if k != "position_ids"}


class WithCache(CausalLM):
    """The packed forward with transformers' default cache, which turns the packed-sequence detection off."""

    def logits_and_targets(self, model, batch):
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_without_the_position_reset_or_with_a_cache_the_examples_see_each_other(name):
    """Guards: the equality above fails when packing lets examples attend to each other."""
    model = model_with(name, "sdpa")
    data = examples()
    batch = collate(pack(data, BLOCK), pad_token_id=0)
    expected = sum(alone_loss(model, e) for e in data)
    with torch.no_grad():
        old = TASK.loss_sum(model, no_position_reset(batch))
        cached = WithCache().loss_sum(model, batch)
    for wrong in (old, cached):  # measured: 7e-4 .. 4e-2 relative apart; the packed loss within 1.2e-7
        assert abs(float(wrong) / float(expected) - 1) > 1e-4, (float(wrong), float(expected))
        with pytest.raises(AssertionError):
            torch.testing.assert_close(wrong, expected)


def test_padding_does_not_change_the_loss():
    """The same blocks alone (unpadded) and in one padded batch give the same summed loss and gradients."""
    model = tiny_llama()
    model.train()
    blocks = pack(examples(), BLOCK)
    grads = []
    for batches in ([collate(blocks, pad_token_id=0)], [collate([b], pad_token_id=0) for b in blocks]):
        model.zero_grad()
        total = sum(TASK.loss_sum(model, batch) for batch in batches)
        total.backward()
        grads.append((total.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for padded, unpadded in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(padded, unpadded)


# -- the trainer --------------------------------------------------------------------------------------------------
def test_trainer_steps_with_packing_match_those_without(tmp_path):
    """Each step on every training example (one global batch): packed or not, the same mean loss per step, the
    same updates (so the same later losses) and the same validation loss."""
    path = make_run(tmp_path, "causal")
    common = ["training.max_steps=3", "lora.lora_dropout=0.0"]
    packed_cfg = config_of(path, *common, "data.packing=true", f"output.dir={tmp_path / 'packed'}")
    checked = Trainer(packed_cfg, check_only=True)
    blocks, examples_in = len(checked.train_set), checked.data_stats["train_rows"]
    assert 1 < blocks < examples_in  # several examples per block
    checked.task.check_packing(checked.raw)  # the model as the trainer builds it (LoRA in place) passes the probe
    plain = train(config_of(path, *common, f"training.batch_size={examples_in}", f"output.dir={tmp_path / 'plain'}"))
    packed = train(config_of(path, *common, "data.packing=true", f"training.batch_size={blocks}",
                             f"output.dir={tmp_path / 'packed'}"))
    losses = [[r["loss"] for r in read_metrics(run.output_dir / "metrics.jsonl") if r["kind"] == "train"]
              for run in (plain, packed)]
    assert len(losses[0]) == 3 and losses[0][2] < losses[0][0]  # it trains
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]))
    torch.testing.assert_close(packed.final_eval["loss"], plain.final_eval["loss"])


# -- models that cannot pack --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_the_packing_probe_passes_models_that_keep_examples_apart(name):
    model = MODELS[name]()
    model.train()
    TASK.check_packing(model)
    assert model.training  # left as found
    TASK.check_packing(MODELS[name]().to(torch.bfloat16))


def tiny_bloom():
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)  # ALiBi: no position ids, so no packed-sequence detection
    return BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=VOCAB)).eval()


def tiny_mamba():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)  # a state carried along the sequence, from one example into the next
    return MambaForCausalLM(MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=VOCAB, state_size=4)).eval()


@pytest.mark.parametrize(("task", "make"), [(TASK, tiny_bloom), (TASK, tiny_mamba), (WithCache(), tiny_llama)],
                         ids=["bloom", "mamba", "llama-with-cache"])
def test_the_packing_probe_refuses_models_whose_examples_see_each_other(task, make):
    model = make()
    with pytest.raises(ConfigError, match=r"data\.packing=true: \w+ lets the examples packed in a block see each "
                                          r"other .*set data\.packing=false"):
        task.check_packing(model)
    assert not model.training


def test_packing_is_refused_for_other_tasks():
    with pytest.raises(ConfigError, match=r"data\.packing=true applies to model\.task=causal-lm, not seq2seq"):
        TASKS["seq2seq"].check_packing(tiny_llama())
