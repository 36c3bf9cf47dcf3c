"""data.path: a save_to_disk folder, a folder of data files, or a Hub dataset id from the HF cache, read through the
`datasets` library, gives the same examples as the same rows in a local file read by lorakit's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from lorakit.errors import ConfigError
from lorakit.hf.tiny import build_tokenizer
from lorakit.train.data import DataConfig, DataError, build_datasets, build_test_set
from tests.hf.hub_cache import add_snapshot, commit_id
from tests.train.runs import classification_rows, write_jsonl

ROWS = classification_rows(40)
TRAIN, VALIDATION, TEST = ROWS[:24], ROWS[24:32], ROWS[32:]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _files(tmp: Path) -> dict[str, Path]:
    return {name: write_jsonl(tmp / f"{name}.jsonl", rows)
            for name, rows in (("train", TRAIN), ("validation", VALIDATION), ("test", TEST))}


def _reference(tmp: Path, tokenizer) -> tuple[list, list, list]:
    tmp.mkdir()
    files = _files(tmp)
    cfg = DataConfig(train_file=str(files["train"]), validation_file=str(files["validation"]),
                     test_file=str(files["test"]), cache_tokenized=False)
    train, val, stats = build_datasets(cfg, tokenizer)
    return train, val, build_test_set(cfg, tokenizer, stats)


def _saved(tmp: Path) -> Path:
    splits = {name: datasets.Dataset.from_list(rows)
              for name, rows in (("train", TRAIN), ("validation", VALIDATION), ("test", TEST))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp / "saved"))
    return tmp / "saved"


def test_a_save_to_disk_folder_gives_the_same_examples_as_local_files(tmp_path, tokenizer):
    train, val, test = _reference(tmp_path / "ref", tokenizer)
    cfg = DataConfig(path=str(_saved(tmp_path)), test_name="test", cache_tokenized=False)
    got_train, got_val, stats = build_datasets(cfg, tokenizer)
    assert (got_train, got_val) == (train, val)  # validation_name=auto found the "validation" split
    assert build_test_set(cfg, tokenizer, stats) == test
    assert stats["labels"] == ["cat", "dog"]


def test_a_hub_dataset_id_reads_its_cached_snapshot_at_a_revision(tmp_path, tokenizer, monkeypatch):
    train, val, _ = _reference(tmp_path / "ref", tokenizer)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    write_jsonl(repo / "data" / "train.jsonl", TRAIN)
    write_jsonl(repo / "data" / "validation.jsonl", VALIDATION)
    add_snapshot(tmp_path / "hf-home" / "hub", "someone/pets", repo, commit_id("v1"), refs=("main", "v1"),
                 kind="dataset")
    got_train, got_val, _ = build_datasets(DataConfig(path="someone/pets", revision="v1", cache_tokenized=False),
                                           tokenizer)
    assert (got_train, got_val) == (train, val)


def test_a_split_can_be_sliced(tmp_path, tokenizer):
    cfg = DataConfig(path=str(_saved(tmp_path)), train_split="train[4:10]", validation_name=None,
                     cache_tokenized=False)
    sliced, val, _ = build_datasets(cfg, tokenizer)
    full, _, _ = build_datasets(DataConfig(path=cfg.path, validation_name=None, cache_tokenized=False), tokenizer)
    assert sliced == full[4:10] and val == []


def test_an_unknown_split_lists_the_splits(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match=r"data.train_split='training'.*\['test', 'train', 'validation'\]"):
        build_datasets(DataConfig(path=str(_saved(tmp_path)), train_split="training"), tokenizer)


def test_a_bad_row_in_a_dataset_names_its_split_and_row(tmp_path, tokenizer):
    rows = [*TRAIN[:3], {"text": "no label here", "label": None}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DataError, match=r"one\[train\] row 4: missing field 'label'"):
        build_datasets(DataConfig(path=str(tmp_path / "one")), tokenizer)


def test_a_folder_of_data_files_is_read_by_datasets(tmp_path, tokenizer):
    train, val, _ = _reference(tmp_path / "ref", tokenizer)
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", TRAIN)
    write_jsonl(folder / "validation.jsonl", VALIDATION)
    got_train, got_val, _ = build_datasets(DataConfig(path=str(folder), cache_tokenized=False), tokenizer)
    assert (got_train, got_val) == (train, val)


def test_path_and_train_file_together_are_refused():
    with pytest.raises(ConfigError, match="set one of them"):
        DataConfig(path="org/data", train_file="train.jsonl")


def test_a_missing_local_folder_that_is_no_hub_id_is_one_line(tokenizer):
    with pytest.raises(ConfigError, match="no such file or folder, and not a Hub dataset id"):
        build_datasets(DataConfig(path="./no/such/folder"), tokenizer)


def test_rows_read_through_datasets_keep_their_json_types(tmp_path, tokenizer):
    chat = [{"messages": [{"role": "user", "content": "what color is the cat ?"},
                          {"role": "assistant", "content": "red"}]}] * 4
    datasets.Dataset.from_list(chat).save_to_disk(str(tmp_path / "chat"))
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    from_dataset, _, _ = build_datasets(DataConfig(path=str(tmp_path / "chat"), cache_tokenized=False), tokenizer)
    from_file, _, _ = build_datasets(DataConfig(train_file=str(tmp_path / "chat.jsonl"), cache_tokenized=False),
                                     tokenizer)
    assert from_dataset == from_file
