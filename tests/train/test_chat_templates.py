"""Assistant-only labels under real chat-template families (Llama-3, ChatML / Qwen, Mistral, Gemma, Phi-3),
each written here in Jinja on an offline byte-level tokenizer. The expected trained text of every assistant turn
is cut out of the rendered conversation with plain string operations (chat_helpers.between), not by lorakit."""

from __future__ import annotations

import pytest

from lorakit.train.data import DataConfig, build_datasets
from tests.train.chat_helpers import between, bpe_tokenizer, trained_runs
from tests.train.data_helpers import write_jsonl

LLAMA3 = ("{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHATML = ("{%- for message in messages %}{%- if loop.first and message['role'] != 'system' %}"
          "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
          "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")
# Mistral: the system prompt goes into the LAST user turn, so adding a turn rewrites an earlier one
MISTRAL = ("{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
           "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
           "{%- set user_messages = loop_messages | selectattr('role', 'equalto', 'user') | list %}"
           "{{- bos_token }}{%- for message in loop_messages %}"
           "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{- raise_exception('conversation roles must alternate user/assistant/user/assistant/...') }}"
           "{%- endif %}{%- if message['role'] == 'user' %}"
           "{%- if message == user_messages[-1] and system_message is defined %}"
           "{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
           "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
           "{%- else %}{{- ' ' + message['content'] | trim + eos_token }}{%- endif %}{%- endfor %}")
# Gemma 3: no system role of its own; the system prompt opens the first user turn
GEMMA = ("{{ bos_token }}{%- if messages[0]['role'] == 'system' %}"
         "{%- set first_user_prefix = messages[0]['content'] + '\n\n' %}{%- set loop_messages = messages[1:] %}"
         "{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
         "{%- for message in loop_messages %}{%- set role = 'model' if message['role'] == 'assistant' "
         "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') "
         "+ message['content'] | trim + '<end_of_turn>\n' }}{%- endfor %}"
         "{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{%- endif %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}{% elif message['role'] == 'user' %}"
        "{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}{% elif message['role'] == 'assistant' %}"
        "{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
# ChatML with {% generation %} blocks: the template marks its assistant text itself
CHATML_GENERATION = ("{%- for message in messages %}{%- if message['role'] == 'assistant' %}"
                     "{{- '<|im_start|>assistant\n' }}{% generation %}{{- message['content'] + '<|im_end|>\n' }}"
                     "{% endgeneration %}{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] "
                     "+ '<|im_end|>\n' }}{%- endif %}{%- endfor %}")

SYSTEM, ASK, AGAIN = "You are a helpful bot.", "Count to three.", "Say it again: one two three"
# The second user turn holds the second answer's words: a search for the content would find them there first.
# The first answer has spaces around it, which Llama-3, Mistral and Gemma trim.
CONVERSATION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK},
                {"role": "assistant", "content": " one two three\n"}, {"role": "user", "content": AGAIN},
                {"role": "assistant", "content": "one two three"}]

# family: (template, bos, eos, the assistant header, the end of an assistant turn; both as the template writes them)
FAMILIES = {
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n",
               "<|eot_id|>"),
    "chatml": (CHATML, "<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n", "<|im_end|>\n"),
    "chatml_generation": (CHATML_GENERATION, "<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n",
                          "<|im_end|>\n"),
    # the byte-level token " one" starts with the space the template writes after [/INST]: trained with its word
    "mistral": (MISTRAL, "<s>", "</s>", "[/INST]", "</s>"),
    "gemma": (GEMMA, "<bos>", "<eos>", "<start_of_turn>model\n", "<end_of_turn>\n"),
    "phi3": (PHI3, "<s>", "<|endoftext|>", "<|assistant|>\n", "<|end|>\n"),
}


def encode(tmp_path, tokenizer, conversation=CONVERSATION, **cfg):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation}])
    # cache_tokenized=False: every call here must run the encoding, not read back an earlier test's result
    (example,), _, stats = build_datasets(DataConfig(train_file=path, cache_tokenized=False, **cfg), tokenizer)
    return example, stats


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_assistant_turn_and_its_end_marker_are_trained(tmp_path, family):
    template, bos, eos, header, end = FAMILIES[family]
    tok = bpe_tokenizer(bos, eos, template)
    example, stats = encode(tmp_path, tok)
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    expected = between(rendered, header, end)
    if family == "phi3":  # the template ends the conversation with EOS: written after the last turn, so trained
        expected[-1] += eos
    assert stats["format"] == "chat"
    assert tok.decode(example["input_ids"], skip_special_tokens=False) == rendered  # tokenized once, nothing added
    assert len(expected) == 2  # both assistant turns
    assert trained_runs(tok, example) == expected
    last = end + eos if family == "phi3" else end
    assert [e.removesuffix(e_end).strip() for e, e_end in zip(expected, (end, last), strict=True)] == \
        ["one two three", "one two three"]
    assert not any(text in run for run in expected for text in (SYSTEM, ASK, "Say it", header.strip()))


def test_mistral_rewrites_an_earlier_turn_so_turn_by_turn_rendering_cannot_work(tmp_path):
    """The old path rendered messages[:i] for growing i and needed each text to extend the one before; Mistral
    moves the system prompt to the newest user turn, so it refused. One rendering, cut by offsets, is right."""
    tok = bpe_tokenizer("<s>", "</s>", MISTRAL)

    def render(n: int) -> str:
        return tok.apply_chat_template(CONVERSATION[:n], tokenize=False)

    assert not render(4).startswith(render(3))  # adding the second user turn rewrote the first one
    example, _ = encode(tmp_path, tok)
    assert trained_runs(tok, example) == [" one two three</s>", " one two three</s>"]
    assert render(5).count(SYSTEM) == 1 and render(5).index(SYSTEM) > render(5).index(ASK)


def test_generation_blocks_and_offsets_give_the_same_labels(tmp_path):
    with_blocks = encode(tmp_path, bpe_tokenizer("<|im_start|>", "<|im_end|>", CHATML_GENERATION))[0]
    plain = CHATML_GENERATION.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert encode(tmp_path, bpe_tokenizer("<|im_start|>", "<|im_end|>", plain))[0] == with_blocks


def test_a_single_turn_conversation_trains_its_answer(tmp_path):
    tok = bpe_tokenizer("<|im_start|>", "<|im_end|>", CHATML)
    example, _ = encode(tmp_path, tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}])
    assert trained_runs(tok, example) == ["Hello<|im_end|>\n"]


def test_truncation_keeps_the_labels_of_the_kept_tokens_and_drops_what_has_none(tmp_path):
    tok = bpe_tokenizer("<|begin_of_text|>", "<|eot_id|>", LLAMA3)
    full, _ = encode(tmp_path, tok)
    first = next(i for i, t in enumerate(full["labels"]) if t != -100)  # the first trained token
    cut, stats = encode(tmp_path, tok, max_seq_len=first + 2)
    assert cut["input_ids"] == full["input_ids"][:first + 2] and stats["truncated"] == 1
    assert cut["labels"] == full["labels"][:first + 2]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    kept, _ = encode(tmp_path, tok, short)
    assert len(kept["input_ids"]) <= first  # fits where the long one loses every trained token
    path = write_jsonl(tmp_path / "two.jsonl", [{"messages": CONVERSATION}, {"messages": short}])
    train, _, stats = build_datasets(DataConfig(train_file=path, max_seq_len=first, cache_tokenized=False), tok)
    assert train == [kept] and stats["dropped"] == 1 and stats["truncated"] == 1


def test_a_template_that_changes_the_answer_is_refused_on_its_row(tmp_path):
    upper = CHATML.replace("message['content'] + '<|im_end|>", "message['content'] | upper + '<|im_end|>")
    tok = bpe_tokenizer("<|im_start|>", "<|im_end|>", upper)
    with pytest.raises(Exception, match=r"chat\.jsonl:1: the chat template \(the tokenizer's chat_template\) "
                                        r"changes assistant message 1's text"):
        encode(tmp_path, tok)


def test_slow_tokenizers_are_labelled_piece_by_piece(tmp_path, monkeypatch):
    tok = bpe_tokenizer("<|im_start|>", "<|im_end|>", CHATML)
    fast, _ = encode(tmp_path, tok)
    monkeypatch.setattr(type(tok), "is_fast", property(lambda self: False))  # no offsets: the fallback path
    slow, _ = encode(tmp_path, tok)
    assert trained_runs(tok, slow) == trained_runs(tok, fast) == [" one two three\n<|im_end|>\n",
                                                                  "one two three<|im_end|>\n"]
