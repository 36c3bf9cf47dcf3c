"""An offline byte-level BPE tokenizer with the special tokens of the chat families, and helpers to read labels
back as text (nothing is downloaded)."""

from __future__ import annotations

from functools import cache

SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # Llama-3
            "<|im_start|>", "<|im_end|>", "<|endoftext|>",  # ChatML / Qwen (and Phi-3's EOS)
            "<s>", "</s>", "[INST]", "[/INST]",  # Mistral
            "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",  # Gemma
            "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]  # Phi-3
CORPUS = ["You are a helpful bot.", "Count to three.", "one two three", "Say it again: one two three",
          "How can I help? Hello there, what is two plus two? It is four.", "user assistant system model"]


@cache
def _core():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 4, trainer)
    return core


def bpe_tokenizer(bos: str, eos: str, template: str | None = None):
    """A fast tokenizer whose every text round-trips exactly (byte level), with the family's BOS / EOS."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_core(), bos_token=bos, eos_token=eos, pad_token=eos)
    tok.chat_template = template
    return tok


def trained_runs(tokenizer, example: dict) -> list[str]:
    """The text of each run of consecutive trained tokens, decoded as written."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def between(text: str, start: str, end: str) -> list[str]:
    """Every piece of `text` after an occurrence of `start` up to and including the next `end`: the expected
    trained text of each assistant turn, found with plain string operations on the rendered conversation."""
    out, pos = [], 0
    while (at := text.find(start, pos)) >= 0:
        stop = text.index(end, at + len(start)) + len(end)
        out.append(text[at + len(start):stop])
        pos = stop
    return out
