"""The row formats: what fields each needs, and how a row becomes text segments to tokenize.

A causal-LM row renders to Segments, (text, trained) pieces in order: the loss covers only the trained ones,
and a trained piece with eos=True is followed by the tokenizer's EOS token. A classification row renders to
a Classified (text, optional text_pair, label name). Field names below are the defaults; DataConfig renames
them (e.g. text_field="sentence").

alpaca             {"instruction", "input" (optional), "output"}     prompt: ALPACA_PROMPT / ALPACA_PROMPT_NO_INPUT
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

from lorakit.prompts import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, CHAT_HEADER, CHAT_ROLES
from lorakit.train.data_files import DataError, Row, preview


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
    render: Callable[[Row, dict[str, str], Any], Any]  # (row, role -> column, tokenizer) -> Segments | Classified
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


def render_chat(row: Row, names: dict[str, str], tokenizer: Any) -> list[Segment]:
    messages = chat_messages(row, names)
    if getattr(tokenizer, "chat_template", None):
        return _chat_with_template(row, messages, tokenizer)
    segments = []
    for message in messages:
        header = CHAT_HEADER.format(role=message["role"])
        if message["role"] == "assistant":
            segments += [Segment(header, False), Segment(message["content"] + "\n", True, eos=True)]
        else:
            segments.append(Segment(header + message["content"] + "\n", False))
    return segments


def _chat_with_template(row: Row, messages: list[dict[str, str]], tokenizer: Any) -> list[Segment]:
    """The tokenizer's own chat template, one turn at a time: turn i is the text that rendering messages[:i+1]
    adds to rendering messages[:i]. For an assistant turn, the generation prompt (its header) is untrained and
    the rest (content and the template's end-of-turn marker) is trained."""

    def render(upto: int, generation_prompt: bool = False) -> str:
        if upto == 0:
            return ""
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False,
                                             add_generation_prompt=generation_prompt)

    segments, done = [], ""
    for i, message in enumerate(messages):
        full = render(i + 1)
        if message["role"] == "assistant":
            header = render(i, generation_prompt=True) if i else ""  # an opening assistant turn: all trained
            if not (header.startswith(done) and full.startswith(header)):
                raise _unstable_template(row)
            segments += [Segment(header[len(done):], False), Segment(full[len(header):], True)]
        else:
            if not full.startswith(done):
                raise _unstable_template(row)
            segments.append(Segment(full[len(done):], False))
        done = full
    return [s for s in segments if s.text]


def _unstable_template(row: Row) -> DataError:
    return DataError(f"{row.where}: the tokenizer's chat_template does not render this conversation turn by turn "
                     "(an earlier turn's text changes when a later turn is added), so the assistant turns cannot "
                     "be masked; use format=prompt_completion, or clear tokenizer.chat_template to use lorakit's "
                     "default chat layout")


def chat_messages(row: Row, names: dict[str, str]) -> list[dict[str, str]]:
    column = names["messages"]
    messages = row.fields.get(column)
    if messages is None:
        raise DataError(f"{row.where}: missing field '{column}' {_needs('chat', names)}")
    if isinstance(messages, str):  # CSV cells hold JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise DataError(f"{row.where}: field '{column}' should be a list of {{role, content}} messages, "
                            f"got text that is not JSON {preview(messages)}") from None
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{row.where}: field '{column}' should be a non-empty list of {{role, content}} "
                        f"messages, got {type(messages).__name__} {preview(messages)}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise DataError(f"{row.where}: {column}[{i}] should be an object with text fields 'role' and "
                            f"'content', got {preview(message)}")
        if message["role"] not in CHAT_ROLES:
            raise DataError(f"{row.where}: {column}[{i}] has role {message['role']!r}; "
                            f"expected one of {list(CHAT_ROLES)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{row.where}: field '{column}' has no assistant message, so nothing to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


FORMATS: dict[str, Format] = {
    "alpaca": Format(("instruction", "output"), render_alpaca),
    "chat": Format(("messages",), render_chat),
    "prompt_completion": Format(("prompt", "completion"), render_prompt_completion),
    "text": Format(("text",), render_text),
    "classification": Format(("text", "label"), render_classification, causal=False),
}
DETECTION_ORDER = ("chat", "alpaca", "prompt_completion", "classification", "text")  # most specific first


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
