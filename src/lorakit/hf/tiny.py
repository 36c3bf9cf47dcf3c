"""Tiny random Hugging Face models with a word-level tokenizer, written to a local directory.

For trying a config end to end in seconds (configs/alpaca-tiny.yaml) and for tests; nothing is downloaded:

    python -m lorakit.hf.tiny tiny-llama --arch llama         # then: lorakit train configs/alpaca-tiny.yaml
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lorakit.prompts import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT

SPECIALS = ["[PAD]", "[UNK]", "<s>", "</s>", "[CLS]", "[SEP]"]
BASE_TEXT = (  # common words, split in build_tokenizer
    "a an the and or but if then so of to in on at by for with from as is are was were be been it this that these "
    "those i you he she we they me him her us them my your his its our their what which who how why when where "
    "yes no not all some any one two three four five six seven eight nine ten first last new old good bad big "
    "small long short high low up down out over under again more most less very can will would should could do "
    "does did make made say said get got go went come came see saw know think take give use find tell ask work "
    "seem feel try leave call write read answer question instruction input output response text word words "
    "sentence number list name color red green blue cat dog bird fish sun moon day night water food book"
)
PUNCT = list(".,!?;:'\"()-+*/=<>#")


def build_tokenizer(words: Iterable[str] = ()):
    """A lowercase word-level tokenizer (unknown words -> [UNK]) as a transformers fast tokenizer. Its vocabulary:
    common English words, lorakit's alpaca / chat templates, and the words of `words`."""
    vocab: dict[str, int] = {}
    texts = [ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, "<|system|> <|user|> <|assistant|>", *words]
    extra = [w.lower() for text in texts for w in re.findall(r"\w+|[^\w\s]+", text)]  # as pre_tokenizers.Whitespace
    for token in [*SPECIALS, *BASE_TEXT.split(), *PUNCT, *"abcdefghijklmnopqrstuvwxyz0123456789", *extra]:
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>",
        cls_token="[CLS]", sep_token="[SEP]",
    )


# arch -> (model class, config builder(hidden size, layers, vocabulary size, special token ids))
ARCH_BUILDERS: dict[str, tuple[type, Callable[[int, int, int, dict[str, int]], Any]]] = {
    "llama": (tf.LlamaForCausalLM, lambda h, layers, vocab, ids: tf.LlamaConfig(
        hidden_size=h, intermediate_size=2 * h, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, **ids)),
    "gpt2": (tf.GPT2LMHeadModel, lambda h, layers, vocab, ids: tf.GPT2Config(
        n_embd=h, n_layer=layers, n_head=4, vocab_size=vocab, n_positions=256, **ids)),
    "bert": (tf.BertModel, lambda h, layers, vocab, ids: tf.BertConfig(
        hidden_size=h, intermediate_size=2 * h, num_hidden_layers=layers, num_attention_heads=4, vocab_size=vocab,
        max_position_embeddings=256, pad_token_id=ids["pad_token_id"])),
    "t5": (tf.T5ForConditionalGeneration, lambda h, layers, vocab, ids: tf.T5Config(
        d_model=h, d_kv=h // 4, d_ff=2 * h, num_layers=layers, num_heads=4, vocab_size=vocab,
        decoder_start_token_id=ids["pad_token_id"], **ids)),
}
ARCHS = tuple(ARCH_BUILDERS)


def make_tiny_model(path: str | Path, arch: str = "llama", words: Iterable[str] = (), seed: int = 0,
                    hidden_size: int = 32, layers: int = 2) -> Path:
    """Write a random `arch` model (a few thousand parameters) and its tokenizer to `path`. Returns the path."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: expected one of {list(ARCHS)}")
    tokenizer = build_tokenizer(words)
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    klass, build_config = ARCH_BUILDERS[arch]
    config = build_config(hidden_size, layers, len(tokenizer), ids)
    torch.manual_seed(seed)
    model = klass(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="directory to write")
    parser.add_argument("--arch", default="llama", choices=ARCHS)
    parser.add_argument("--words", type=Path, help="a text file whose words join the vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    words = [args.words.read_text(encoding="utf-8")] if args.words else []
    print(f"wrote a tiny random {args.arch} model to {make_tiny_model(args.path, args.arch, words, args.seed)}")


if __name__ == "__main__":
    main()
