"""Training data: local JSON / JSONL / CSV / TSV / Parquet files -> tokenized examples, and batches of them.

    train, val, stats = build_datasets(DataConfig(train_file="data/train.jsonl", validation_split=0.1), tok)
    batch = collate(train[:8], tok.pad_token_id)      # {"input_ids", "attention_mask", "labels" | "label"}

An example is a dict of lists. Causal LM formats (alpaca, chat, prompt_completion, text):
{"input_ids", "attention_mask", "labels"} where labels are the input ids with IGNORE (-100) on every token
that carries no loss: the prompt, non-assistant chat turns. (The model shifts: position t predicts t+1.)
Classification: {"input_ids", "attention_mask", "label"} with label the index into stats["labels"].

Reading is in data_files.py, the formats (fields, templates) in data_formats.py. Every data problem raises
DataError, `path:line: reason`; with skip_bad_rows=True bad rows are skipped, counted in stats["bad_rows"] and
logged as one warning.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from typing_extensions import NotRequired  # typing.NotRequired is Python 3.11+

from lorakit.errors import ConfigError
from lorakit.train import token_cache
from lorakit.train.chat import chat_options, check_chat_config
from lorakit.train.chat_labels import Encoded
from lorakit.train.data_files import BadRows, DataError, Row
from lorakit.train.data_formats import FORMATS, Classified, FieldNames, Segment, detect_format
from lorakit.train.data_sources import Sources, open_sources
from lorakit.train.packing import pack_examples, padded_positions

__all__ = ["IGNORE", "DataConfig", "DataError", "DataStats", "build_datasets", "collate", "pack"]

IGNORE = -100  # label of a token that carries no loss (prompt, padding); torch's cross_entropy ignore_index
ROLES = ("text", "text_pair", "label", "instruction", "input", "output", "prompt", "completion", "messages")
log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    # a Hugging Face dataset: a Hub id ("org/name", from the HF cache; HF_HUB_OFFLINE honoured), or a folder
    # written by Dataset(Dict).save_to_disk; read through the `datasets` library. Its splits fill train_file /
    # validation_file / test_file (see train_split, validation_name, test_name). None: use train_file
    path: str | None = None
    subset: str | None = None  # the dataset's configuration name (datasets' `name`), e.g. "wikitext-2-raw-v1"
    revision: str | None = None  # a Hub dataset's branch, tag or commit
    train_split: str = "train"  # split of data.path to train on (also a slice: "train[:1000]")
    validation_name: str | None = "auto"  # split of data.path to validate on; auto: "validation" or "valid" if any
    test_name: str | None = None  # split of data.path scored once after training (like test_file)
    train_file: str | None = None  # JSON / JSONL / CSV / TSV / Parquet file; None: the demo's Rotten Tomatoes
    validation_file: str | None = None  # same formats; None: validation_split of train_file, or no validation
    validation_split: float = 0.0  # fraction of train_file held out for validation (seeded shuffle); 0: none
    # scored once, with the final weights, after training (summary "test_eval"); never used to pick anything
    test_file: str | None = None
    # auto (from the first row's fields) | alpaca | sharegpt | chat | prompt_completion | text | classification
    format: str = "auto"
    text_field: str = "text"  # text, classification
    text_pair_field: str = "text_pair"  # classification: optional second text (sentence pairs)
    label_field: str = "label"  # classification: a label name, or an integer
    instruction_field: str = "instruction"  # alpaca
    input_field: str = "input"  # alpaca: optional context
    output_field: str = "output"  # alpaca: the response (trained)
    prompt_field: str = "prompt"  # prompt_completion: not trained
    completion_field: str = "completion"  # prompt_completion: trained
    messages_field: str = "messages"  # chat: a list of {"role", "content"}; assistant turns are trained
    role_key: str = "role"  # chat: the key of a message's role (ShareGPT: "from")
    content_key: str = "content"  # chat: the key of a message's text (ShareGPT: "value")
    # chat: source role name -> system | user | assistant | tool (ShareGPT's human / gpt are mapped by default)
    role_map: dict[str, str] | None = None
    # chat: a Jinja chat template (the text, or a path to a .jinja file) used instead of the tokenizer's own
    chat_template: str | None = None
    max_seq_len: int = 512  # tokens per example; longer ones are cut at the end (counted in stats["truncated"])
    # causal LM: several whole examples per block of max_seq_len tokens, kept apart (own positions, no attention
    # or loss across them), so the loss is the same as without packing, with less padding
    packing: bool = False
    skip_bad_rows: bool = False  # skip (and count) malformed rows instead of stopping at the first
    # keep the tokenized examples between runs (needs `datasets`; train/token_cache.py): the same data, tokenizer and
    # data settings are read back instead of tokenized again
    cache_tokenized: bool = True
    labels: list[str] | None = None  # classification label names, in index order; None: sorted, from train_file
    seed: int = 0  # seeds the validation_split shuffle

    def __post_init__(self) -> None:
        if self.path is not None and self.train_file is not None:
            raise ConfigError(f"data.path={self.path!r} and data.train_file={self.train_file!r}: set one of them "
                              "(data.path for a Hub dataset or a datasets folder, train_file for a local file)")
        for name in ("train_file", "validation_file", "test_file", "path"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"data.{name}={value!r}: expected a file path or null")
        split = self.validation_split
        if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
            raise ConfigError(f"data.validation_split={split!r}: expected a fraction in [0, 1), e.g. 0.1")
        if self.validation_file is not None and split > 0:
            raise ConfigError(f"data.validation_file={self.validation_file!r} and data.validation_split={split}: "
                              "set one of them (the other to null / 0)")
        choices = ["auto", *FORMATS]
        if self.format not in choices:
            raise ConfigError(f"data.format={self.format!r}: expected one of {choices}")
        for role in ROLES:
            value = getattr(self, f"{role}_field")
            if not isinstance(value, str) or not value:
                raise ConfigError(f"data.{role}_field={value!r}: expected the name of a field in the data")
        for name, least in (("max_seq_len", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"data.{name}={value!r}: expected an integer >= {least}")
        check_chat_config(self.role_key, self.content_key, self.role_map, self.chat_template)
        if self.packing and self.format == "classification":
            raise ConfigError("data.packing=true applies to language-model formats, not classification; "
                              "set data.packing=false")
        if self.labels is not None:
            if not isinstance(self.labels, (list, tuple)) or len(self.labels) < 2:
                raise ConfigError(f"data.labels={self.labels!r}: expected a list of at least 2 label names, "
                                  "or null to take them from the train file")
            self.labels = [str(label) for label in self.labels]
            repeated = sorted({label for label in self.labels if self.labels.count(label) > 1})
            if repeated:
                raise ConfigError(f"data.labels={self.labels!r}: {repeated} appear more than once")

    def field_names(self) -> FieldNames:
        """role -> the column that holds it, e.g. {"text": "sentence", "label": "label", ...}; its .chat says how
        chat messages are read and rendered (keys, role_map, chat_template, a template file read here)."""
        chat = chat_options(self.role_key, self.content_key, self.role_map, self.chat_template)
        return FieldNames({role: getattr(self, f"{role}_field") for role in ROLES}, chat)


class DataStats(TypedDict):
    """What build_datasets did (a plain dict at run time)."""

    format: str  # the format used (format=auto resolved)
    labels: list[str] | None  # classification: label names in index order; else None
    train_rows: int  # good rows read from train_file (before the validation split)
    validation_rows: int  # good rows read from validation_file
    bad_rows: int  # rows skipped by skip_bad_rows (both files)
    bad_row_examples: list[str]  # the first few of their error messages
    truncated: int  # examples cut to max_seq_len
    dropped: int  # causal LM examples with no trained token left after truncation (prompt >= max_seq_len)
    train_examples: int  # after the split and packing
    validation_examples: int
    trained_tokens: int  # train tokens that carry loss (labels != IGNORE); classification: 0
    packed: bool
    cache: NotRequired[str]  # the tokenized-data cache: hit (read back) | stored (tokenized, then kept) | off


def build_datasets(cfg: DataConfig, tokenizer: Any) -> tuple[list[dict], list[dict], DataStats]:
    """(train examples, validation examples, stats) from cfg's files or dataset (data_sources.py). The validation
    list is empty when the run has no validation data. Read from the tokenized-data cache when the same data,
    tokenizer and settings were encoded before (token_cache.py); stats["cache"] says which."""
    sources = open_sources(cfg)
    key = token_cache.cache_key(cfg, tokenizer, sources.identity()) if token_cache.enabled(cfg) else None
    cached = token_cache.load(key) if key else None
    if cached is not None:
        train, val, stats = cached
        stats["cache"] = "hit"
        _warn(DataStats(**stats), cfg)  # what the encoding found is said again
        return train, val, DataStats(**stats)
    train, val, stats = _build(cfg, tokenizer, sources)
    if key:
        token_cache.save(key, train, val, {**stats, "cache": "stored"})
    stats["cache"] = "stored" if key else "off"
    return train, val, stats


def _build(cfg: DataConfig, tokenizer: Any, sources: Sources) -> tuple[list[dict], list[dict], DataStats]:
    names, bad = cfg.field_names(), BadRows(skip=cfg.skip_bad_rows)
    source = sources.name
    train_rows = sources.rows("train", bad)
    val_rows = sources.rows("validation", bad)
    if not train_rows:
        raise DataError(f"{source}: every row is bad ({bad.count} skipped); first: {bad.messages[0]}")
    fmt = cfg.format if cfg.format != "auto" else detect_format(train_rows[0], names)
    spec = FORMATS[fmt]
    if cfg.packing and not spec.causal:
        raise DataError(f"{source}: data.packing=true applies to language-model formats, and this file "
                        f"is {fmt}; set data.packing=false")
    train_items = _render(train_rows, fmt, names, tokenizer, bad)
    val_items = _render(val_rows, fmt, names, tokenizer, bad)
    stats = DataStats(format=fmt, labels=None, train_rows=len(train_items), validation_rows=len(val_items),
                      bad_rows=0, bad_row_examples=[], truncated=0, dropped=0, train_examples=0,
                      validation_examples=0, trained_tokens=0, packed=cfg.packing)
    if spec.causal:
        prefix = [] if fmt == "chat" and getattr(tokenizer, "chat_template", None) else special_prefix(tokenizer)
        train, val = (_encode_all(items, tokenizer, prefix, cfg, stats) for items in (train_items, val_items))
    else:
        stats["labels"] = labels = cfg.labels or infer_labels([item for _, item in train_items])
        if len(labels) < 2:  # a 1-class head has nothing to learn: its loss is 0 from the first step
            raise DataError(f"{source}: every row has the label {labels[0]!r}; classification needs at least "
                            "2 labels. Add rows of the other labels, or list every label in data.labels")
        index = {label: i for i, label in enumerate(labels)}
        label_source = "data.labels" if cfg.labels else f"the labels found in {source}"
        train, val = (_classify_all(items, index, label_source, tokenizer, cfg, stats, bad)
                      for items in (train_items, val_items))
    if not train:
        raise DataError(f"{source}: no usable example ({stats['dropped']} dropped: nothing to train on "
                        f"within max_seq_len={cfg.max_seq_len}; {bad.count} bad rows skipped)")
    if cfg.validation_split > 0:
        train, val = split_validation(train, cfg.validation_split, cfg.seed, source)
    if cfg.packing:
        train, val = pack(train, cfg.max_seq_len), pack(val, cfg.max_seq_len)
    stats.update(bad_rows=bad.count, bad_row_examples=list(bad.messages), train_examples=len(train),
                 validation_examples=len(val),
                 trained_tokens=sum(t != IGNORE for e in train for t in e["labels"]) if spec.causal else 0)
    _warn(stats, cfg)
    return train, val, stats


def build_test_set(cfg: DataConfig, tokenizer: Any, stats: DataStats) -> list[dict]:
    """The examples of cfg.test_file (empty when unset), encoded like the validation set: the training data's
    format and labels, never packed."""
    if cfg.test_file is None and not (cfg.path and cfg.test_name):
        return []
    from_file = cfg.test_file is not None  # a test file wins over data.path's test split
    test_cfg = dataclasses.replace(cfg, train_file=cfg.test_file, validation_file=None, validation_split=0.0,
                                   path=None if from_file else cfg.path, train_split=cfg.train_split if from_file
                                   else cfg.test_name, validation_name=None, test_name=None,
                                   test_file=None, format=stats["format"], labels=stats["labels"] or cfg.labels,
                                   packing=False)
    examples, _, _ = build_datasets(test_cfg, tokenizer)
    return examples


def _render(rows: list[Row], fmt: str, names: dict[str, str], tokenizer: Any, bad: BadRows) -> list[tuple[Row, Any]]:
    out = []
    for row in rows:
        try:
            out.append((row, FORMATS[fmt].render(row, names, tokenizer)))
        except DataError as error:
            bad.handle(error)
    return out


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. [BOS]; [CLS] for BERT; [] for GPT-2)."""
    marked = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(marked) - len(plain) + 1):
        if marked[start:start + len(plain)] == plain:
            return list(marked[:start])
    return []


def encode_segments(segments: Sequence[Segment], tokenizer: Any,
                    prefix: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prefix + each segment tokenized on its own (+ EOS where asked); labels copy the ids
    of trained segments and are IGNORE elsewhere."""
    eos = tokenizer.eos_token_id
    ids, labels = list(prefix), [IGNORE] * len(prefix)
    for segment in segments:
        piece = list(tokenizer(segment.text, add_special_tokens=False)["input_ids"]) if segment.text else []
        if segment.eos and eos is not None:
            piece.append(eos)
        ids += piece
        labels += piece if segment.trained else [IGNORE] * len(piece)
    return ids, labels


def _encode_all(items: list[tuple[Row, Any]], tokenizer: Any, prefix: list[int], cfg: DataConfig,
                stats: DataStats) -> list[dict]:
    examples = []
    for _, item in items:
        if isinstance(item, Encoded):  # a chat template's tokens: it wrote its own special tokens, so no prefix
            ids = list(item.input_ids)
            labels = [t if on else IGNORE for t, on in zip(ids, item.trained, strict=True)]
        else:
            ids, labels = encode_segments(item, tokenizer, prefix)
        if len(ids) > cfg.max_seq_len:  # packed or not, an example is cut to max_seq_len (packing keeps it whole)
            ids, labels = ids[:cfg.max_seq_len], labels[:cfg.max_seq_len]
            stats["truncated"] += 1
            if all(t == IGNORE for t in labels):
                stats["dropped"] += 1
                continue
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return examples


def infer_labels(items: Sequence[Classified]) -> list[str]:
    """The label names in the data, sorted: numerically when they are all integers ("2" before "10")."""
    names = {item.label for item in items}
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _classify_all(items: list[tuple[Row, Classified]], index: dict[str, int], source: str, tokenizer: Any,
                  cfg: DataConfig, stats: DataStats, bad: BadRows) -> list[dict]:
    examples = []
    for row, item in items:
        if item.label not in index:
            bad.handle(DataError(f"{row.where}: unknown label {item.label!r}; the labels are {list(index)} "
                                 f"({source}); fix the row or list every label in data.labels"))
            continue
        encoded = tokenizer(item.text, item.text_pair)
        if len(encoded["input_ids"]) > cfg.max_seq_len:
            stats["truncated"] += 1
            encoded = tokenizer(item.text, item.text_pair, truncation=True, max_length=cfg.max_seq_len)
        ids = list(encoded["input_ids"])
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "label": index[item.label]})
    return examples


def split_validation(examples: list[dict], fraction: float, seed: int, source: str) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded random `fraction` of the examples (at least one) held out; both keep
    file order."""
    n_val = max(1, round(len(examples) * fraction))
    if n_val >= len(examples):
        raise DataError(f"{source}: data.validation_split={fraction} of {len(examples)} examples leaves none to "
                        "train on; lower it or give a data.validation_file")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def pack(examples: Sequence[Mapping[str, Sequence[int]]], block: int) -> list[dict]:
    """Whole causal-LM examples packed (best-fit) into blocks of at most `block` tokens, with no padding inside a
    block and no cross-talk: each block also has "position_ids" that restart at 0 at every example, and the first
    label of each example is IGNORE, so with tasks.CausalLM every example's loss is the one it has alone
    (train/packing.py). Examples longer than `block` are cut at the end (and left out if no trained token is left)."""
    return pack_examples(examples, block).blocks


def collate(examples: Sequence[Mapping[str, Any]], pad_token_id: int | None) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the batch (on the right) and stack: input_ids with pad_token_id,
    attention_mask with 0, labels with IGNORE, packed blocks' position_ids by counting on (padded_positions);
    a classification "label" becomes a (batch,) tensor."""
    if not examples:
        raise ValueError("collate needs at least one example")
    longest = max(len(e["input_ids"]) for e in examples)
    if pad_token_id is None:
        if any(len(e["input_ids"]) != longest for e in examples):
            raise DataError("the tokenizer has no pad token, and this batch needs padding; set "
                            "tokenizer.pad_token = tokenizer.eos_token (padding is masked out anyway)")
        pad_token_id = 0
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE}
    batch = {}
    for key, pad in pads.items():
        if key in examples[0]:
            batch[key] = torch.tensor([list(e[key]) + [pad] * (longest - len(e[key])) for e in examples])
    if "position_ids" in examples[0]:
        batch["position_ids"] = torch.tensor([padded_positions(e["position_ids"], longest) for e in examples])
    if "label" in examples[0]:
        batch["label"] = torch.tensor([int(e["label"]) for e in examples])
    return batch


def _warn(stats: DataStats, cfg: DataConfig) -> None:
    """One line per problem, naming the data it is about (the training data, or a test file / split)."""
    where = cfg.path + (f"[{cfg.train_split}]" if cfg.train_split != "train" else "") if cfg.path else cfg.train_file
    if stats["bad_rows"]:
        log.warning("%s: skipped %d bad rows (data.skip_bad_rows=true); first: %s", where, stats["bad_rows"],
                    stats["bad_row_examples"][0])
    if stats["truncated"]:
        log.warning("%s: %d examples were longer than data.max_seq_len=%d and were cut at the end%s", where,
                    stats["truncated"], cfg.max_seq_len,
                    f"; {stats['dropped']} lost every trained token and were dropped" if stats["dropped"] else "")
