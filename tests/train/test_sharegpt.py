"""ShareGPT rows, message key and role mapping, and data.chat_template (a file or text, and its errors). The
reference for every mapping is the same conversation written as plain {"role", "content"} chat rows."""

from __future__ import annotations

import pytest

from lorakit.errors import ConfigError
from lorakit.train.data import DataConfig, DataError, build_datasets
from tests.train.chat_helpers import bpe_tokenizer, trained_runs
from tests.train.data_helpers import word_tokenizer, write_jsonl
from tests.train.test_chat_templates import CHATML, LLAMA3

CHAT = [{"role": "system", "content": "you are a helpful bot ."}, {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "how can i help ?"}, {"role": "user", "content": "count to three"},
        {"role": "assistant", "content": "one two three"}]
SHAREGPT = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
            for m in CHAT]


def build(tmp_path, rows, tokenizer, **cfg):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    return build_datasets(DataConfig(train_file=path, cache_tokenized=False, **cfg), tokenizer)


@pytest.mark.parametrize("tokenizer", [word_tokenizer, lambda: bpe_tokenizer("<|im_start|>", "<|im_end|>", CHATML)],
                         ids=["default layout", "chatml template"])
def test_sharegpt_rows_are_detected_and_read_as_chat(tmp_path, tokenizer):
    reference, _, _ = build(tmp_path, [{"messages": CHAT}], tokenizer())
    train, _, stats = build(tmp_path, [{"conversations": SHAREGPT, "id": "x1"}], tokenizer())
    assert stats["format"] == "sharegpt"
    assert train == reference and any(t != -100 for t in train[0]["labels"])


def test_a_conversations_column_of_role_content_messages_reads_too(tmp_path):
    reference, _, _ = build(tmp_path, [{"messages": CHAT}], word_tokenizer())
    assert build(tmp_path, [{"conversations": CHAT}], word_tokenizer())[0] == reference


def test_role_map_and_message_keys_for_chat(tmp_path):
    names = {"system": "instructions", "user": "person", "assistant": "bot"}
    rows = [{"dialog": [{"speaker": names[m["role"]], "text": m["content"]} for m in CHAT]}]
    train, _, stats = build(tmp_path, rows, word_tokenizer(), format="chat", messages_field="dialog",
                            role_key="speaker", content_key="text",
                            role_map={"person": "user", "bot": "assistant", "instructions": "system"})
    assert stats["format"] == "chat"
    assert train == build(tmp_path, [{"messages": CHAT}], word_tokenizer())[0]


def test_role_map_overrides_the_sharegpt_defaults(tmp_path):
    rows = [{"conversations": [dict(m, **{"from": "teacher"}) if m["from"] == "gpt" else m for m in SHAREGPT]}]
    train, _, _ = build(tmp_path, rows, word_tokenizer(), role_map={"teacher": "assistant"})
    assert train == build(tmp_path, [{"messages": CHAT}], word_tokenizer())[0]


def test_unknown_role_names_the_row_and_the_mapping(tmp_path):
    rows = [{"conversations": SHAREGPT}, {"conversations": [{"from": "robot", "value": "hi"}]}]
    with pytest.raises(DataError) as info:
        build(tmp_path, rows, word_tokenizer(), role_map={"bot": "assistant"})
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'train.jsonl'}:2: conversations[0] has role 'robot'; expected one of")
    assert "'bot': 'assistant'" in message and "'gpt': 'assistant'" in message and "data.role_map" in message
    assert "\n" not in message


def test_a_sharegpt_message_without_its_text(tmp_path):
    rows = [{"conversations": [{"from": "human", "text": "hi"}]}]
    with pytest.raises(DataError, match=r"train\.jsonl:1: conversations\[0\] should be an object with text fields "
                                        r"'from' and 'value'"):
        build(tmp_path, rows, word_tokenizer())


@pytest.mark.parametrize("as_file", [True, False], ids=["file", "text"])
def test_data_chat_template_replaces_the_tokenizers(tmp_path, as_file):
    """The tokenizer's own template is ChatML; data.chat_template (Llama-3) wins, and gives what a tokenizer
    carrying Llama-3 itself gives."""
    (tmp_path / "llama3.jinja").write_text(LLAMA3, encoding="utf-8")
    template = str(tmp_path / "llama3.jinja") if as_file else LLAMA3
    tok = bpe_tokenizer("<|begin_of_text|>", "<|eot_id|>", CHATML)
    train, _, _ = build(tmp_path, [{"messages": CHAT}], tok, chat_template=template)
    reference, _, _ = build(tmp_path, [{"messages": CHAT}], bpe_tokenizer("<|begin_of_text|>", "<|eot_id|>", LLAMA3))
    assert train == reference
    assert trained_runs(tok, train[0]) == ["how can i help ?<|eot_id|>", "one two three<|eot_id|>"]
    assert tok.chat_template == CHATML  # the caller's tokenizer is left as it was


def test_data_chat_template_on_a_tokenizer_without_one(tmp_path):
    tok = word_tokenizer()  # no chat_template: lorakit's default layout unless data.chat_template is set
    template = "{% for m in messages %}[BOS] {{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"
    train, _, _ = build(tmp_path, [{"messages": CHAT[1:3]}], tok, chat_template=template)
    assert tok.decode(train[0]["input_ids"]) == "[BOS] user : hi there [EOS] [BOS] assistant : how can i help ? [EOS]"
    assert tok.decode([t for t in train[0]["labels"] if t != -100]) == "how can i help ? [EOS]"


def test_a_template_that_is_not_jinja_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "broken.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }}", encoding="utf-8")  # no endfor
    with pytest.raises(ConfigError) as info:
        build(tmp_path, [{"messages": CHAT}], word_tokenizer(), chat_template=str(bad))
    message = str(info.value)
    assert message.startswith(f"data.chat_template file {bad}: not a valid Jinja template: ")
    assert "endfor" in message and "\n" not in message


def test_a_template_that_refuses_a_conversation_names_the_row(tmp_path):
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}{{ 'x' }}"
    with pytest.raises(DataError, match=r"train\.jsonl:1: the chat template \(data\.chat_template\) cannot render "
                                        r"this conversation: no system role"):
        build(tmp_path, [{"messages": CHAT}], word_tokenizer(), chat_template=template)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"chat_template": "templates/missing.jinja"}, "data.chat_template='templates/missing.jinja': no such file"),
    ({"chat_template": "  "}, "expected Jinja text or the path of a file"),
    ({"role_map": {"bot": "robot"}}, r"data.role_map: 'bot': 'robot' should map a role name to one of \['system'"),
    ({"role_map": ["bot"]}, "data.role_map=\\['bot'\\]: expected a mapping"),
    ({"role_key": ""}, "data.role_key='': expected the key of each message that holds its role"),
])
def test_bad_chat_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**kwargs)
