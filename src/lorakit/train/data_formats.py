"""The row formats: what fields each needs, and how a row becomes text segments to tokenize.

A causal-LM row renders to Segments, (text, trained) pieces in order: the loss covers only the trained ones,
and a trained piece with eos=True is followed by the tokenizer's EOS token. A conversation rendered by a chat
template is tokenized at once instead, to an Encoded (ids, and which carry loss; see chat_labels.py). A
classification row renders to a Classified (text, optional text_pair, label name). Field names below are the
defaults; DataConfig renames them (e.g. text_field="sentence"; chat message keys: role_key, content_key).

alpaca             {"instruction", "input" (optional), "output"}     prompt: ALPACA_PROMPT / ALPACA_PROMPT_NO_INPUT
sharegpt           {"conversations": [{"from", "value"}, ...]}       loss on the assistant (gpt) turns only
chat               {"messages": [{"role", "content"}, ...]}          loss on the assistant turns only
prompt_completion  {"prompt", "completion"}                          loss on the completion
text               {"text"}                                          loss on every token
classification     {"text", "text_pair" (optional), "label"}         label: a string, or an integer (its name)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorakit.prompts import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, CHAT_HEADER
from lorakit.train.chat import ChatOptions
from lorakit.train.chat_labels import Encoded, encode_chat
from lorakit.train.data_files import DataError, Row, preview

FIXED_COLUMNS = {"conversations": "conversations"}  # ShareGPT's column (format=chat reads any column)


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool  # loss on these tokens
    eos: bool = False  # follow with the tokenizer's EOS token (trained with the segment)


@dataclass(frozen=True)
class Classified:
    text: str
    text_pair: str | None
    label: str  # the label's name; an integer label is its decimal string


@dataclass(frozen=True)
class Format:
    needs: tuple[str, ...]  # roles a row must have (role -> column name via DataConfig)
    # (row, role -> column, tokenizer) -> Segments | Encoded | Classified
    render: Callable[[Row, dict[str, str], Any], Any]
    causal: bool = True  # False: classification


def render_alpaca(row: Row, names: dict[str, str], tokenizer: Any) -> list[Segment]:
    """The prompt (not trained), then the output and EOS (trained):

        Below is an instruction that describes a task[, paired with an input that provides further context].
        Write a response that appropriately completes the request.

        ### Instruction:
        {instruction}

        ### Input:                 (these two lines and the blank one after them only when input is not empty)
        {input}

        ### Response:
        {output}<EOS>
    """
    instruction = text_field(row, "instruction", names, "alpaca")
    extra = text_field(row, "input", names, "alpaca", required=False)
    output = text_field(row, "output", names, "alpaca")
    if extra.strip():
        prompt = ALPACA_PROMPT.format(instruction=instruction, input=extra)
    else:
        prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
    return [Segment(prompt, False), Segment(output, True, eos=True)]


def render_prompt_completion(row: Row, names: dict[str, str], tokenizer: Any) -> list[Segment]:
    prompt = text_field(row, "prompt", names, "prompt_completion")
    completion = text_field(row, "completion", names, "prompt_completion")
    return [Segment(prompt, False), Segment(completion, True, eos=True)]


def render_text(row: Row, names: dict[str, str], tokenizer: Any) -> list[Segment]:
    return [Segment(text_field(row, "text", names, "text"), True, eos=True)]


def render_classification(row: Row, names: dict[str, str], tokenizer: Any) -> Classified:
    text = text_field(row, "text", names, "classification")
    pair = text_field(row, "text_pair", names, "classification", required=False) or None
    column = names["label"]
    label = row.fields.get(column)
    if label is None:
        raise DataError(f"{row.where}: missing field '{column}' {_needs('classification', names)}")
    if isinstance(label, float) and label.is_integer():
        label = int(label)  # Parquet / pandas write integer columns with nulls as floats
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(f"{row.where}: field '{column}' should be a label name (text) or an integer, "
                        f"got {type(label).__name__} {preview(label)}")
    label = str(label).strip()
    if not label:
        raise DataError(f"{row.where}: field '{column}' is empty")
    return Classified(text, pair, label)


def render_chat(row: Row, names: dict[str, str], tokenizer: Any) -> list[Segment] | Encoded:
    return _render_conversation(row, names, tokenizer, sharegpt=False)


def render_sharegpt(row: Row, names: dict[str, str], tokenizer: Any) -> list[Segment] | Encoded:
    return _render_conversation(row, names, tokenizer, sharegpt=True)


def _render_conversation(row: Row, names: dict[str, str], tokenizer: Any, sharegpt: bool) -> list[Segment] | Encoded:
    """With a chat template (data.chat_template, else the tokenizer's): the whole conversation rendered and
    tokenized once, labelled on the assistant turns (chat_labels.py). Without one: lorakit's layout below."""
    options = getattr(names, "chat", None) or ChatOptions()
    messages = chat_messages(row, names, options, sharegpt)
    if options.template or getattr(tokenizer, "chat_template", None):
        return encode_chat(messages, tokenizer, options.template, options.template_source, row.where)
    return default_chat_layout(messages)


def default_chat_layout(messages: list[dict[str, str]]) -> list[Segment]:
    """Each turn is CHAT_HEADER + content + newline; an assistant turn's content, newline and EOS are trained."""
    segments = []
    for message in messages:
        header = CHAT_HEADER.format(role=message["role"])
        if message["role"] == "assistant":
            segments += [Segment(header, False), Segment(message["content"] + "\n", True, eos=True)]
        else:
            segments.append(Segment(header + message["content"] + "\n", False))
    return segments


def chat_messages(row: Row, names: dict[str, str], options: ChatOptions | None = None,
                  sharegpt: bool = False) -> list[dict[str, str]]:
    """The row's messages as [{"role", "content"}] with lorakit's role names (data.role_map applied)."""
    options = options or ChatOptions()
    fmt = "sharegpt" if sharegpt else "chat"
    column = names[FORMATS[fmt].needs[0]]
    role_keys, content_keys = options.keys(sharegpt)
    shape = f"{{{role_keys[0]}, {content_keys[0]}}}"
    messages = row.fields.get(column)
    if messages is None:
        raise DataError(f"{row.where}: missing field '{column}' {_needs(fmt, names)}")
    if isinstance(messages, str):  # CSV cells hold JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise DataError(f"{row.where}: field '{column}' should be a list of {shape} messages, "
                            f"got text that is not JSON {preview(messages)}") from None
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{row.where}: field '{column}' should be a non-empty list of {shape} "
                        f"messages, got {type(messages).__name__} {preview(messages)}")
    roles, out = options.roles, []
    for i, message in enumerate(messages):
        role_key = next((k for k in role_keys if isinstance(message, dict) and k in message), role_keys[0])
        content_key = next((k for k in content_keys if isinstance(message, dict) and k in message), content_keys[0])
        if not isinstance(message, dict) or not isinstance(message.get(role_key), str) \
                or not isinstance(message.get(content_key), str):
            raise DataError(f"{row.where}: {column}[{i}] should be an object with text fields '{role_key}' and "
                            f"'{content_key}', got {preview(message)}")
        role = message[role_key]
        if role not in roles:
            renamed = {name: to for name, to in roles.items() if name != to}
            raise DataError(f"{row.where}: {column}[{i}] has role {role!r}; expected one of {sorted(roles)} "
                            f"(renamed: {renamed}); add it to data.role_map, e.g. {{{role}: assistant}}")
        out.append({"role": roles[role], "content": message[content_key]})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{row.where}: field '{column}' has no assistant message, so nothing to learn from")
    return out


class FieldNames(dict[str, str]):
    """role -> the column that holds it (DataConfig's *_field values, plus the fixed ShareGPT column), and
    .chat: how chat messages are read and rendered."""

    def __init__(self, columns: dict[str, str], chat: ChatOptions | None = None) -> None:
        super().__init__({**FIXED_COLUMNS, **columns})
        self.chat = chat or ChatOptions()


FORMATS: dict[str, Format] = {
    "alpaca": Format(("instruction", "output"), render_alpaca),
    "sharegpt": Format(("conversations",), render_sharegpt),
    "chat": Format(("messages",), render_chat),
    "prompt_completion": Format(("prompt", "completion"), render_prompt_completion),
    "text": Format(("text",), render_text),
    "classification": Format(("text", "label"), render_classification, causal=False),
}
DETECTION_ORDER = ("sharegpt", "chat", "alpaca", "prompt_completion", "classification", "text")  # most specific first


def detect_format(row: Row, names: dict[str, str]) -> str:
    """The first format in DETECTION_ORDER whose fields the row has (format=auto looks at the first row)."""
    for name in DETECTION_ORDER:
        if all(names[role] in row.fields for role in FORMATS[name].needs):
            return name
    expected = "; ".join(f"{name}: {[names[r] for r in FORMATS[name].needs]}" for name in DETECTION_ORDER)
    raise DataError(f"{row.where}: cannot tell the data format from the fields {sorted(row.fields)[:12]}; "
                    f"expected one of  {expected}  (or set data.format and the data.*_field names)")


def text_field(row: Row, role: str, names: dict[str, str], fmt: str, required: bool = True) -> str:
    column = names[role]
    value = row.fields.get(column)
    if value is None:
        if required:
            raise DataError(f"{row.where}: missing field '{column}' {_needs(fmt, names)}")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{row.where}: field '{column}' should be text, got {type(value).__name__} "
                        f"{preview(value)}")
    if required and not value.strip():
        raise DataError(f"{row.where}: field '{column}' is empty")
    return value


def _needs(fmt: str, names: dict[str, str]) -> str:
    fields = [f"'{names[role]}'" for role in FORMATS[fmt].needs]
    return f"({fmt} format needs {' and '.join(fields)})"
