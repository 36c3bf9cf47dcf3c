"""`lorakit demo chat`: the instruction set it builds (fast), its overrides, and one short end-to-end run (slow)."""

from __future__ import annotations

import json
import os

import pytest

from lorakit.demo.chat import run_chat_demo, split_overrides
from lorakit.demo.chat_data import ChatSizes, answer, build_chat_data, question, read_split, verdict_of
from lorakit.errors import ConfigError


def write_split(path, movies: dict[str, list[tuple[str, str]]]) -> None:
    rows = [{"text": text, "label": label, "movie": movie} for movie, items in movies.items() for text, label in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def splits(tmp_path):
    """Three small splits, each movie in one of them, with long reviews that must be skipped."""
    paths = {}
    for name in ("train", "validation", "test"):
        movies = {f"{name}-movie-{m}": [(f"{name} {m} review {i} was {'good' if i % 2 else 'bad'}",
                                         "fresh" if i % 2 else "rotten") for i in range(10)] for m in range(3)}
        movies[f"{name}-long"] = [("x" * 500, "fresh"), ("y" * 500, "rotten")]
        paths[name] = tmp_path / f"{name}.jsonl"
        write_split(paths[name], movies)
    return paths


def test_rows_are_chat_turns_in_the_checkable_format(splits, tmp_path):
    files = build_chat_data(splits, tmp_path / "data", ChatSizes(train=12, validation=6, test=4))
    source = {r["text"]: r for r in read_split(splits["train"])}
    for row in read_split(files["train"]):
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        review = user["content"].split("Review: ", 1)[1]
        assert user["content"] == question(review)
        assert verdict_of(assistant["content"]) == source[review]["label"]  # the answer carries the review's label
    for row in read_split(files["test"]):
        assert set(row) == {"prompt", "label", "movie"} and row["label"] in ("fresh", "rotten")


def test_counts_are_balanced_and_long_reviews_skipped(splits, tmp_path):
    files = build_chat_data(splits, tmp_path / "data", ChatSizes(train=12, validation=6, test=4))
    train = read_split(files["train"])
    assert [len(read_split(files[n])) for n in ("train", "validation", "test")] == [12, 6, 4]
    verdicts = [verdict_of(r["messages"][1]["content"]) for r in train]
    assert verdicts.count("fresh") == verdicts.count("rotten") == 6
    assert all(not r["movie"].endswith("-long") for r in train)


def test_splits_stay_disjoint_by_movie_on_the_real_data(tmp_path):
    from lorakit.corpora.rotten_tomatoes import rotten_tomatoes_splits

    files = build_chat_data(rotten_tomatoes_splits(), tmp_path / "data")
    movies = {name: {r["movie"] for r in read_split(path)} for name, path in files.items()}
    assert movies["train"].isdisjoint(movies["validation"]) and movies["train"].isdisjoint(movies["test"])
    assert movies["validation"].isdisjoint(movies["test"])
    sizes = ChatSizes()
    assert [len(read_split(files[n])) for n in ("train", "validation", "test")] == [sizes.train, sizes.validation,
                                                                                      sizes.test]


def test_the_folder_is_replaced_whole(splits, tmp_path):
    target = tmp_path / "data"
    build_chat_data(splits, target, ChatSizes(train=4, validation=2, test=2))
    (target / "stale.jsonl").write_text("{}\n")
    build_chat_data(splits, target, ChatSizes(train=6, validation=2, test=2))
    assert sorted(p.name for p in target.iterdir()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_too_few_short_reviews_is_a_config_error(splits, tmp_path):
    with pytest.raises(ConfigError, match="too few short reviews"):
        build_chat_data(splits, tmp_path / "data", ChatSizes(train=100, validation=2, test=2))
    assert not (tmp_path / "data").exists()


def test_verdict_parsing():
    assert verdict_of(answer("fresh")) == "fresh" and verdict_of(answer("rotten")) == "rotten"
    assert verdict_of(" verdict: Rotten.") == "rotten"
    assert verdict_of("The review is fresh") is None and verdict_of("Verdict: freshly") is None


def test_demo_keys_split_from_training_overrides():
    settings, rest = split_overrides(["demo.eval_prompts=8", "training.max_steps=3", "demo.compare_prompts=2"])
    assert (settings.eval_prompts, settings.compare_prompts, rest) == (8, 2, ["training.max_steps=3"])


@pytest.mark.parametrize("item, message", [("demo.nope=1", "KEY one of"), ("demo.eval_prompts=x", "whole number"),
                                           ("demo.compare_prompts=0", "positive"),
                                           ("demo.compare_prompts=99", "more than demo.eval_prompts")])
def test_bad_demo_keys_are_config_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        split_overrides([item])


def test_bad_training_override_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="lora_rank"):
        run_chat_demo([f"output.dir={tmp_path / 'out'}", "lora.lora_rank=4"], say=lambda _: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_end_to_end_short_run_serves_what_generate_answers(tmp_path):
    lines: list[str] = []
    result = run_chat_demo([f"output.dir={tmp_path}", "training.max_steps=2", "demo.eval_prompts=2",
                            "demo.compare_prompts=1"], say=lines.append)
    for stage in ("data", "train", "compare", "score", "serve"):
        assert any(line.startswith("[") and f" {stage}] done" in line for line in lines), stage
    adapter = tmp_path / "adapters" / "verdict"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert result["train"]["steps"] == 2
    # the server (mixed-adapter batches, chat endpoint) and the in-process generate path give the same greedy text
    assert result["served"]["answer"] == result["compare"][0]["adapter"] != ""
    with pytest.raises(ProcessLookupError):
        os.kill(result["served"]["pid"], 0)  # stopped and reaped
    assert result["served"]["returncode"] is not None
    assert set(result["scores"]) == {"base", "adapter"} and result["eval_prompts"] == 2


def test_lorakit_demo_chat_reaches_the_chat_demo_and_its_checks(capsys):
    from lorakit.cli.main import main

    assert main(["demo", "chat", "demo.train_rows=0"]) == 2
    assert "'demo.train_rows=0': expected a positive number" in capsys.readouterr().err
