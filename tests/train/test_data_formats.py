"""Each format end to end: rows -> examples, with the loss mask checked against tokenizing the parts on their own."""

from __future__ import annotations

import pytest

from lorakit.train.data import DataConfig, DataError, build_datasets
from tests.train.data_helpers import ids, minilm_tokenizer, trained, word_tokenizer, write_csv, write_jsonl

BOS, EOS = 2, 3  # word_tokenizer's


def build(tmp_path, rows, tokenizer=None, name="train.jsonl", **cfg):
    path = write_jsonl(tmp_path / name, rows)
    return build_datasets(DataConfig(train_file=path, **cfg), tokenizer or word_tokenizer())


def test_alpaca_masks_exactly_the_prompt(tmp_path):
    tok = word_tokenizer()
    row = {"instruction": "name a color", "input": "the sky", "output": "blue"}
    (example,), _, stats = build(tmp_path, [row])
    prompt = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nname a color\n\n"
              "### Input:\nthe sky\n\n### Response:\n")
    n_prompt = len(ids(tok, prompt, special=True))  # [BOS] + the prompt, tokenized separately
    assert stats["format"] == "alpaca"
    assert example["input_ids"] == ids(tok, prompt, special=True) + ids(tok, "blue") + [EOS]
    assert example["labels"][:n_prompt] == [-100] * n_prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:]


def test_alpaca_without_input_uses_the_shorter_prompt(tmp_path):
    tok = word_tokenizer()
    (example,), _, _ = build(tmp_path, [{"instruction": "name a color", "output": "green"}])
    prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.\n\n### Instruction:\nname a color\n\n### Response:\n")
    assert example["input_ids"] == ids(tok, prompt, special=True) + ids(tok, "green") + [EOS]
    assert trained(example) == [*ids(tok, "green"), EOS]


def test_prompt_completion_trains_on_the_completion_and_eos(tmp_path):
    tok = word_tokenizer()
    row = {"prompt": "what is two plus two ?", "completion": " it is four ."}
    (example,), _, stats = build(tmp_path, [row])
    n_prompt = len(ids(tok, row["prompt"], special=True))
    assert stats["format"] == "prompt_completion"
    assert example["labels"][:n_prompt] == [-100] * n_prompt
    assert trained(example) == [*ids(tok, row["completion"]), EOS]
    assert example["attention_mask"] == [1] * len(example["input_ids"])


def test_text_trains_on_every_token_but_bos(tmp_path):
    tok = word_tokenizer()
    (example,), _, stats = build(tmp_path, [{"text": "the grass is green ."}])
    assert stats["format"] == "text"
    assert example["input_ids"] == [BOS, *ids(tok, "the grass is green ."), EOS]
    assert example["labels"] == [-100, *ids(tok, "the grass is green ."), EOS]


def test_tokenizer_without_bos_adds_no_prefix(tmp_path):
    tok = word_tokenizer(bos=False)
    (example,), _, _ = build(tmp_path, [{"text": "hello world"}], tokenizer=tok)
    assert example["input_ids"] == [*ids(tok, "hello world"), EOS]


CHAT = [{"role": "system", "content": "you are a helpful bot ."}, {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "how can i help ?"}, {"role": "user", "content": "count to three"},
        {"role": "assistant", "content": "one two three"}]


def test_chat_default_layout_trains_only_assistant_turns(tmp_path):
    tok = word_tokenizer()
    (example,), _, stats = build(tmp_path, [{"messages": CHAT}])
    text = ("<|system|>\nyou are a helpful bot .\n<|user|>\nhi there\n<|assistant|>\nhow can i help ?\n[EOS]"
            "<|user|>\ncount to three\n<|assistant|>\none two three\n[EOS]")
    assert stats["format"] == "chat"
    assert example["input_ids"] == ids(tok, text, special=True)  # [EOS] in text is the special token
    assert trained(example) == [*ids(tok, "how can i help ?"), EOS, *ids(tok, "one two three"), EOS]
    first = len(ids(tok, "<|system|>\nyou are a helpful bot .\n<|user|>\nhi there\n<|assistant|>\n", special=True))
    assert example["labels"][:first] == [-100] * first


def test_chat_uses_the_tokenizers_chat_template(tmp_path):
    tok = word_tokenizer()
    tok.chat_template = ("{% for m in messages %}[BOS] {{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"
                         "{% if add_generation_prompt %}[BOS] assistant : {% endif %}")
    try:
        (example,), _, _ = build(tmp_path, [{"messages": CHAT[1:]}])
    finally:
        tok.chat_template = None  # the tokenizer is shared (cached)
    rendered = ("[BOS] user : hi there [EOS] [BOS] assistant : how can i help ? [EOS] "
                "[BOS] user : count to three [EOS] [BOS] assistant : one two three [EOS] ")
    assert example["input_ids"] == ids(tok, rendered)  # no extra BOS: the template has its own
    assert trained(example) == ids(tok, "how can i help ? [EOS] one two three [EOS]")


@pytest.mark.parametrize(("messages", "reason"), [
    ([{"role": "user", "content": "hi"}], "has no assistant message"),
    ([{"role": "robot", "content": "hi"}], "has role 'robot'; expected one of"),
    ([{"role": "user", "text": "hi"}], r"messages\[0\] should be an object with text fields 'role' and 'content'"),
    ("hello", "should be a list of"),
])
def test_bad_chat_rows(tmp_path, messages, reason):
    with pytest.raises(DataError, match=reason) as info:
        build(tmp_path, [{"messages": CHAT}, {"messages": messages}])
    assert str(info.value).startswith(f"{tmp_path / 'train.jsonl'}:2: ")


def test_classification_matches_the_tokenizer_and_sorts_labels(tmp_path):
    tok = minilm_tokenizer()
    rows = [{"text": "the dog chased the cat", "label": "yes"}, {"text": "a cat", "label": "no"},
            {"text": "two texts", "text_pair": "make a pair", "label": "maybe"}]
    train, _, stats = build(tmp_path, rows, tokenizer=tok)
    assert stats["format"] == "classification" and stats["labels"] == ["maybe", "no", "yes"]
    assert [e["label"] for e in train] == [2, 1, 0]
    assert train[0]["input_ids"] == tok("the dog chased the cat")["input_ids"]
    assert train[2]["input_ids"] == tok("two texts", "make a pair")["input_ids"]
    assert train[2]["attention_mask"] == [1] * len(train[2]["input_ids"])


def test_integer_labels_sort_as_numbers_and_csv_labels_match_them(tmp_path):
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 0, 2])]
    train, _, stats = build(tmp_path, rows, tokenizer=minilm_tokenizer())
    assert stats["labels"] == ["0", "2", "10"]
    assert [e["label"] for e in train] == [2, 1, 0, 1]
    path = write_csv(tmp_path / "train.csv", rows)  # CSV labels are text: "10" is the same label as 10
    train_csv, _, _ = build_datasets(DataConfig(train_file=path), minilm_tokenizer())
    assert [e["label"] for e in train_csv] == [2, 1, 0, 1]


def test_configured_labels_fix_the_order(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    train, _, stats = build(tmp_path, rows, tokenizer=minilm_tokenizer(), labels=["pos", "neg", "neutral"])
    assert stats["labels"] == ["pos", "neg", "neutral"]
    assert [e["label"] for e in train] == [0, 1]


def test_unknown_label_in_the_validation_file(tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "x", "label": "pos"}, {"text": "y", "label": "meh"}])
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    with pytest.raises(DataError) as info:
        build(tmp_path, rows, tokenizer=minilm_tokenizer(), validation_file=val)
    assert str(info.value).startswith(f"{val}:2: unknown label 'meh'; the labels are ['neg', 'pos']")


@pytest.mark.parametrize(("row", "message"), [
    ({"instruction": "name a color"},
     "missing field 'output' (alpaca format needs 'instruction' and 'output')"),
    ({"instruction": "name a color", "output": 42}, "field 'output' should be text, got int (42)"),
    ({"instruction": "name a color", "output": "  "}, "field 'output' is empty"),
])
def test_bad_alpaca_rows_name_their_line_and_reason(tmp_path, row, message):
    good = {"instruction": "name a color", "output": "blue"}
    with pytest.raises(DataError) as info:
        build(tmp_path, [good, row], format="alpaca")
    assert str(info.value) == f"{tmp_path / 'train.jsonl'}:2: {message}"


@pytest.mark.parametrize(("label", "message"), [
    (None, "missing field 'label' (classification format needs 'text' and 'label')"),
    ([1], "field 'label' should be a label name (text) or an integer, got list ([1])"),
    (True, "field 'label' should be a label name (text) or an integer, got bool (true)"),
])
def test_bad_labels(tmp_path, label, message):
    row = {"text": "b"} if label is None else {"text": "b", "label": label}
    with pytest.raises(DataError) as info:
        build(tmp_path, [{"text": "a", "label": "x"}, row], tokenizer=minilm_tokenizer(), format="classification")
    assert str(info.value) == f"{tmp_path / 'train.jsonl'}:2: {message}"


@pytest.mark.parametrize(("row", "fmt"), [
    ({"messages": CHAT}, "chat"), ({"instruction": "a", "input": "", "output": "b"}, "alpaca"),
    ({"prompt": "a", "completion": "b"}, "prompt_completion"), ({"text": "a", "label": 1}, "classification"),
    ({"text": "a", "meta": 1}, "text"),
])
def test_auto_detects_the_format_from_the_first_row(tmp_path, row, fmt):
    second = [{"text": "b", "label": 0}] if fmt == "classification" else []  # one label alone is refused
    assert build(tmp_path, [row, *second], tokenizer=minilm_tokenizer())[2]["format"] == fmt


def test_auto_detection_failure_lists_the_formats(tmp_path):
    with pytest.raises(DataError, match=r"train\.jsonl:1: cannot tell the data format from the fields \['body'\]"):
        build(tmp_path, [{"body": "a"}])


def test_renamed_fields(tmp_path):
    rows = [{"sentence": "a cat", "category": "animal"}, {"sentence": "a pilot", "category": "person"}]
    train, _, stats = build(tmp_path, rows, tokenizer=minilm_tokenizer(), text_field="sentence",
                            label_field="category")
    assert stats["format"] == "classification" and stats["labels"] == ["animal", "person"]
    assert train[1]["input_ids"] == minilm_tokenizer()("a pilot")["input_ids"]
