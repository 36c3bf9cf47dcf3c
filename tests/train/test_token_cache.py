"""The tokenized-data cache: a second build of the same data, tokenizer and settings is read back (not tokenized
again) and equals a fresh build; any change to the data, the tokenizer or a data setting is built anew."""

from __future__ import annotations

import pytest

from lorakit.hf.tiny import build_tokenizer
from lorakit.train import data as data_module
from lorakit.train.data import DataConfig, build_datasets
from lorakit.train.token_cache import cache_root
from tests.train.runs import alpaca_rows, write_jsonl


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """How many times build_datasets tokenized (its uncached path ran)."""
    calls: list[int] = []
    real = data_module._build

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "_build", counted)
    return calls


def _config(tmp_path, **changes) -> DataConfig:
    train = tmp_path / "train.jsonl"
    if not train.exists():
        write_jsonl(train, alpaca_rows(24))
    return DataConfig(train_file=str(train), validation_split=0.25, **changes)


def test_a_second_build_is_read_back_and_equals_a_fresh_one(tmp_path, cache, builds):
    tokenizer = build_tokenizer()
    first = build_datasets(_config(tmp_path), tokenizer)
    second = build_datasets(_config(tmp_path), tokenizer)
    fresh = build_datasets(_config(tmp_path, cache_tokenized=False), tokenizer)
    assert len(builds) == 2  # the first and the uncached one; the second was a hit
    assert (first[2]["cache"], second[2]["cache"], fresh[2]["cache"]) == ("stored", "hit", "off")
    assert second[:2] == fresh[:2] == first[:2]
    assert {k: v for k, v in second[2].items() if k != "cache"} == {k: v for k, v in fresh[2].items() if k != "cache"}
    assert len(list(cache_root().iterdir())) == 1


def test_changed_data_is_tokenized_again(tmp_path, cache, builds):
    tokenizer = build_tokenizer()
    build_datasets(_config(tmp_path), tokenizer)
    write_jsonl(tmp_path / "train.jsonl", alpaca_rows(24, seed=1))  # same file name, other rows
    changed = build_datasets(_config(tmp_path), tokenizer)
    assert len(builds) == 2 and changed[2]["cache"] == "stored"
    assert changed[:2] == build_datasets(_config(tmp_path, cache_tokenized=False), tokenizer)[:2]


def test_a_changed_tokenizer_or_setting_is_a_new_entry(tmp_path, cache, builds):
    build_datasets(_config(tmp_path), build_tokenizer())
    build_datasets(_config(tmp_path), build_tokenizer(["zebra"]))  # one more word in the vocabulary
    build_datasets(_config(tmp_path, max_seq_len=48), build_tokenizer())
    assert len(builds) == 3


def test_a_damaged_entry_is_rebuilt_not_trusted(tmp_path, cache, builds):
    tokenizer = build_tokenizer()
    expected = build_datasets(_config(tmp_path), tokenizer)
    entry = next(cache_root().iterdir())
    (entry / "stats.json").write_text("{not json")
    again = build_datasets(_config(tmp_path), tokenizer)
    assert len(builds) == 2 and again[:2] == expected[:2]


def test_an_unwritable_cache_only_costs_the_cache(tmp_path, monkeypatch, builds):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LORAKIT_CACHE", str(blocker))  # a file where the cache folder should be
    train, _, stats = build_datasets(_config(tmp_path), build_tokenizer())
    assert train and stats["cache"] == "stored"


def test_an_edited_chat_template_file_is_a_new_entry(tmp_path, cache, builds):
    chat = [{"messages": [{"role": "user", "content": "what color is the cat ?"},
                          {"role": "assistant", "content": "red"}]}] * 4
    train = write_jsonl(tmp_path / "chat.jsonl", chat)
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} </s> {% endfor %}")
    config = DataConfig(train_file=str(train), chat_template=str(template))
    first, _, _ = build_datasets(config, build_tokenizer())
    template.write_text("{% for m in messages %}{{ m.role }} : {{ m.content }} </s> {% endfor %}")  # same path
    second, _, stats = build_datasets(config, build_tokenizer())
    assert len(builds) == 2 and stats["cache"] == "stored" and first != second


def test_the_truncation_a_previous_call_left_on_the_tokenizer_does_not_change_the_key(tmp_path, cache, builds):
    from lorakit.train.data import DataConfig as Config
    from tests.train.runs import classification_rows

    train = write_jsonl(tmp_path / "cls.jsonl", classification_rows(24))
    tokenizer = build_tokenizer()
    config = Config(train_file=str(train), max_seq_len=4)  # every row is cut: the tokenizer is called truncating
    build_datasets(config, tokenizer)
    _, _, stats = build_datasets(config, tokenizer)
    assert stats["cache"] == "hit" and len(builds) == 1
