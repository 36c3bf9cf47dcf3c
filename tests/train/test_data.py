"""DataConfig validation, build_datasets (truncation, packing, validation data, skipped rows) and collate."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from lorakit.errors import ConfigError
from lorakit.train.data import DataConfig, DataError, build_datasets, collate, pack
from tests.train.data_helpers import ids, minilm_tokenizer, trained, word_tokenizer, write_jsonl

EOS = 3  # word_tokenizer's
ALPACA = [{"instruction": "name a color", "output": "blue"},
          {"instruction": "count to three", "output": "one two three"},
          {"instruction": "translate to french : cat", "input": "hello world", "output": "good morning"}]


def build(tmp_path, rows, tokenizer=None, **cfg):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    return build_datasets(DataConfig(train_file=path, **cfg), tokenizer or word_tokenizer())


def test_defaults_construct_and_name_every_field():
    cfg = DataConfig()
    assert cfg.train_file is None and cfg.format == "auto" and cfg.max_seq_len == 512
    assert cfg.field_names()["output"] == "output"
    assert DataConfig(labels=[0, 1]).labels == ["0", "1"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"validation_split": 1.0}, r"data.validation_split=1.0: expected a fraction in \[0, 1\)"),
    ({"validation_split": "0.1"}, "data.validation_split='0.1'"),
    ({"validation_split": 0.1, "validation_file": "v.jsonl"}, "set one of them"),
    ({"format": "openai"}, r"data.format='openai': expected one of \['auto', 'alpaca', 'sharegpt', 'chat'"),
    ({"max_seq_len": 0}, "data.max_seq_len=0: expected an integer >= 1"),
    ({"text_field": ""}, "data.text_field='': expected the name of a field"),
    ({"labels": ["only"]}, "expected a list of at least 2 label names"),
    ({"labels": ["a", "b", "a"]}, r"\['a'\] appear more than once"),
    ({"format": "classification", "packing": True}, "data.packing=true applies to language-model formats"),
    ({"train_file": ""}, "data.train_file='': expected a file path or null"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**kwargs)


def test_missing_train_file_setting():
    with pytest.raises(DataError, match=r"data\.train_file is not set"):
        build_datasets(DataConfig(), word_tokenizer())


def test_causal_truncation_keeps_the_start_and_counts(tmp_path):
    full, _, _ = build(tmp_path, ALPACA)
    limit = max(len(e["input_ids"]) for e in full) - 1  # cuts the longest example's EOS
    cut, _, stats = build(tmp_path, ALPACA, max_seq_len=limit)
    assert stats["truncated"] == 1 and stats["dropped"] == 0
    for before, after in zip(full, cut, strict=True):
        assert after["input_ids"] == before["input_ids"][:limit] and after["labels"] == before["labels"][:limit]


def test_examples_whose_prompt_fills_max_seq_len_are_dropped(tmp_path):
    rows = [{"prompt": "one two three four five six", "completion": "seven"}, {"prompt": "a", "completion": "b"}]
    train, _, stats = build(tmp_path, rows, max_seq_len=5)
    assert stats["truncated"] == 1 and stats["dropped"] == 1 and len(train) == 1
    with pytest.raises(DataError, match="no usable example"):
        build(tmp_path, rows[:1], max_seq_len=5)


def test_classification_truncation_matches_the_tokenizer(tmp_path):
    tok = minilm_tokenizer()
    rows = [{"text": "a short one", "label": "a"}, {"text": "this sentence is much too long to fit", "label": "b"}]
    train, _, stats = build(tmp_path, rows, tokenizer=tok, max_seq_len=6)
    assert stats["truncated"] == 1
    assert train[1]["input_ids"] == tok(rows[1]["text"], truncation=True, max_length=6)["input_ids"]
    assert len(train[1]["input_ids"]) == 6 and train[0]["input_ids"] == tok("a short one")["input_ids"]


def test_packing_keeps_each_example_whole_and_every_trained_token(tmp_path):
    plain, _, _ = build(tmp_path, ALPACA * 3)  # 30, 32 and 47 tokens
    packed, _, stats = build(tmp_path, ALPACA * 3, packing=True, max_seq_len=64)
    assert stats["packed"] and stats["truncated"] == 0 and len(packed) == stats["train_examples"] == 6
    pieces = []
    for block in packed:
        assert len(block["input_ids"]) <= 64
        starts = [i for i, p in enumerate(block["position_ids"]) if p == 0] + [len(block["input_ids"])]
        pieces += [tuple(block["input_ids"][a:b]) for a, b in itertools.pairwise(starts)]
    assert sorted(pieces) == sorted(tuple(e["input_ids"]) for e in plain)
    assert stats["trained_tokens"] == sum(len(trained(e)) for e in plain)


def test_packing_cuts_long_examples_as_without_packing(tmp_path):
    limit = 40  # cuts the 47-token example
    plain, _, _ = build(tmp_path, ALPACA, max_seq_len=limit)
    packed, _, stats = build(tmp_path, ALPACA, packing=True, max_seq_len=limit)
    assert sorted(tuple(b["input_ids"]) for b in packed) == sorted(tuple(e["input_ids"]) for e in plain)
    assert stats["truncated"] == 1


def test_pack_is_a_pure_function():
    examples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    before = [dict(e) for e in examples]
    assert pack(examples, 5) == [{"input_ids": [1, 2, 3, 4, 5], "attention_mask": [1] * 5,
                                  "labels": [-100, 2, 3, -100, 5], "position_ids": [0, 1, 2, 0, 1]}]
    assert pack(examples, 4) == [
        {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [-100, 2, 3], "position_ids": [0, 1, 2]},
        {"input_ids": [4, 5], "attention_mask": [1, 1], "labels": [-100, 5], "position_ids": [0, 1]},
    ]
    assert examples == before


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"text": f"{word} one", "label": str(i % 2)} for i, word in enumerate("abcdefghijklmnopqrst")]
    tok = minilm_tokenizer()
    train, val, stats = build(tmp_path, rows, tokenizer=tok, validation_split=0.25, seed=1)
    key = lambda examples: sorted(tuple(e["input_ids"]) for e in examples)  # noqa: E731
    assert (len(train), len(val)) == (15, 5) == (stats["train_examples"], stats["validation_examples"])
    assert key(train + val) == key(build(tmp_path, rows, tokenizer=tok)[0])
    assert key(build(tmp_path, rows, tokenizer=tok, validation_split=0.25, seed=1)[1]) == key(val)
    assert key(build(tmp_path, rows, tokenizer=tok, validation_split=0.25, seed=2)[1]) != key(val)


def test_validation_split_too_large_for_the_data(tmp_path):
    with pytest.raises(DataError, match="leaves none to train on"):
        build(tmp_path, ALPACA[:1], validation_split=0.5)


def test_validation_file_gets_the_same_treatment(tmp_path):
    tok = word_tokenizer()
    val = write_jsonl(tmp_path / "val.jsonl", ALPACA[:2])
    train, val_set, stats = build(tmp_path, ALPACA, validation_file=val)
    assert len(train) == 3 and val_set == train[:2]
    assert stats["validation_rows"] == 2 and trained(val_set[0]) == [*ids(tok, "blue"), EOS]


def test_skip_bad_rows_counts_and_warns(tmp_path, caplog):
    rows = [ALPACA[0], {"instruction": "x"}, ALPACA[1], {"instruction": "y", "output": 5}]
    with pytest.raises(DataError, match=r"train\.jsonl:2: missing field 'output'"):
        build(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="lorakit.train.data"):
        train, _, stats = build(tmp_path, rows, skip_bad_rows=True)
    assert len(train) == 2 and stats["bad_rows"] == 2
    assert stats["bad_row_examples"][1].endswith("train.jsonl:4: field 'output' should be text, got int (5)")
    assert "skipped 2 bad rows" in caplog.text


def test_all_rows_bad(tmp_path):
    with pytest.raises(DataError, match=r"every row is bad \(2 skipped\)"):
        build(tmp_path, ["x", "y"], skip_bad_rows=True)


def test_collate_pads_to_the_longest():
    examples = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
                {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    batch = collate(examples, pad_token_id=0)
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    torch.testing.assert_close(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    torch.testing.assert_close(batch["labels"], torch.tensor([[-100, 6, 7], [8, -100, -100]]))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_collate_classification_batch(tmp_path):
    train, _, _ = build(tmp_path, [{"text": "a cat", "label": "x"}, {"text": "the dog chased it", "label": "y"}],
                        tokenizer=minilm_tokenizer())
    batch = collate(train, minilm_tokenizer().pad_token_id)
    assert batch["input_ids"].shape == (2, len(train[1]["input_ids"])) and batch["input_ids"].dtype == torch.long
    torch.testing.assert_close(batch["label"], torch.tensor([0, 1]))
    assert batch["attention_mask"].sum().item() == len(train[0]["input_ids"]) + len(train[1]["input_ids"])


def test_collate_without_a_pad_token():
    examples = [{"input_ids": [5, 6], "attention_mask": [1, 1]}, {"input_ids": [7], "attention_mask": [1]}]
    with pytest.raises(DataError, match="no pad token"):
        collate(examples, pad_token_id=None)
    assert collate(examples[:1], pad_token_id=None)["input_ids"].tolist() == [[5, 6]]
