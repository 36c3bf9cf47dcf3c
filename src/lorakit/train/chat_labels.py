"""Assistant-only labels for a conversation rendered by a Jinja chat template.

The template renders the whole conversation once, the text is tokenized once (with character offsets), and the
tokens that overlap an assistant span carry the loss. Rendering turn by turn would be simpler, but it is wrong
for templates that rewrite earlier turns (Mistral puts the system prompt into the last user turn).

Finding the spans. The conversation is rendered a second time with each assistant content replaced by a marker.
Cut at the markers, this skeleton is the template's own text around the assistant contents, P0 .. Pn, and the
real rendering must read  P0 + c0 + P1 + c1 + ... + Pn  where ci is assistant message i's content as the
template wrote it (as given, or trimmed: Llama-3 trims). So the spans come from the template's structure, never
from searching for the content, which may also appear in a user turn.

Where an assistant turn ends. Its trained text is its content, then what the template writes after the content
when the conversation stops there (the skeleton of messages[:i+1] after its last marker), up to where the full
conversation's text goes another way (P(i+1)), in whole tokens. That is the end-of-turn marker and the newline
the template may put after it (<|eot_id|>, <|im_end|>, </s>, <end_of_turn>, <|end|>), never the next turn's
header. A template that ends the whole conversation with EOS (Phi-3) has it trained after the last turn. The
header before the content is not trained.

Tokens. A token carries loss when its characters overlap a span (the rule of transformers'
return_assistant_tokens_mask). A template with {% generation %} blocks marks its spans itself, and then
apply_chat_template(return_assistant_tokens_mask=True) gives the mask.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lorakit.errors import ConfigError
from lorakit.train.data_files import DataError

MARK = "\ue000{}\ue001"  # private-use characters: no template writes these, and trim() keeps them
GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Encoded:
    """A row already tokenized (a chat template's text, tokenized once): the ids and which carry loss. The
    template wrote its own special tokens, so nothing is added before it."""

    input_ids: list[int]
    trained: list[bool]


def encode_chat(messages: Messages, tokenizer: Any, template: str | None, source: str, where: str) -> Encoded:
    """The conversation through the chat template (None: the tokenizer's own), labelled on the assistant turns."""
    text_of_template = template or tokenizer.get_chat_template()
    if GENERATION_BLOCK.search(text_of_template) and tokenizer.is_fast:
        out = _apply(tokenizer, messages, template, source, where, tokenize=True, return_dict=True,
                     return_assistant_tokens_mask=True)
        return Encoded(list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]])

    def render(conversation: Messages) -> str:
        return _apply(tokenizer, conversation, template, source, where, tokenize=False)

    def shared(alone: str, after: str) -> int:
        return shared_start(tokenizer, alone, after)

    text = render(messages)
    spans = assistant_spans(messages, text, render, shared, f"{where}: the chat template ({source})")
    if tokenizer.is_fast:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        trained = [any(start < end_span and end > start_span for start_span, end_span in spans)
                   for start, end in enc["offset_mapping"]]
        return Encoded(list(enc["input_ids"]), trained)
    return _encode_pieces(text, spans, tokenizer)  # slow tokenizers give no offsets


def assistant_spans(messages: Messages, text: str, render: Callable[[Messages], str],
                    shared: Callable[[str, str], int], what: str) -> list[tuple[int, int]]:
    """(start, end) character spans of `text` (messages rendered) that are trained: each assistant content and
    its end-of-turn marker (the module docstring says how they are found). shared(a, b): how many characters
    at the start of b are the same as a's, in whole tokens."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    marked = [dict(m, content=MARK.format(turns.index(i))) if i in turns else m for i, m in enumerate(messages)]
    pieces = _cut(render(marked), len(turns), what)
    if not text.startswith(pieces[0]):
        raise _moved(what, 0)
    spans, pos = [], len(pieces[0])
    for k, i in enumerate(turns):
        after = pieces[k + 1]
        content = messages[i]["content"]
        written = next((c for c in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip()))
                        if text.startswith(c + after, pos)), None)
        if written is None or (k == len(turns) - 1 and pos + len(written) + len(after) != len(text)):
            raise _moved(what, k)
        end = pos + len(written)
        alone = _cut(render(marked[:i + 1]), k + 1, what)[-1]  # the text after the turn, were it the last
        spans.append((pos, end + shared(alone, after)))
        pos = end + len(after)
    return spans


def _cut(skeleton: str, n: int, what: str) -> list[str]:
    """The skeleton's text around markers 0 .. n-1, which must each appear once, in order."""
    pieces, pos = [], 0
    for k in range(n):
        mark = MARK.format(k)
        at = skeleton.find(mark, pos)
        if at < 0 or skeleton.count(mark) != 1:
            raise DataError(f"{what} does not write assistant message {k + 1} exactly once, so its tokens cannot "
                            "be labelled; use a template that renders every assistant turn, or format="
                            "prompt_completion")
        pieces.append(skeleton[pos:at])
        pos = at + len(mark)
    return [*pieces, skeleton[pos:]]


def _moved(what: str, k: int) -> DataError:
    return DataError(f"{what} changes assistant message {k + 1}'s text (beyond trimming spaces) or the text "
                     "around it depends on it, so its tokens cannot be labelled; use format=prompt_completion, "
                     "or a data.chat_template that writes the content as given")


def shared_start(tokenizer: Any, a: str, b: str) -> int:
    """How many characters at the start of b are the same as a's, in whole tokens: Phi-3's "<|end|>" newline
    "<|endoftext|>" and "<|end|>" newline "<|user|>" share the marker and the newline, not the "<|" of the
    special tokens after them."""
    ids_a = tokenizer(a, add_special_tokens=False)["input_ids"]
    enc_b = tokenizer(b, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids_b = enc_b["input_ids"]
    n = next((k for k, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y), min(len(ids_a), len(ids_b)))
    if n == 0:
        return 0
    chars = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    covered = enc_b["offset_mapping"][n - 1][1] if tokenizer.is_fast else len(tokenizer.decode(ids_b[:n]))
    return min(covered, chars)


def _encode_pieces(text: str, spans: Sequence[tuple[int, int]], tokenizer: Any) -> Encoded:
    """Tokenize the text cut at span edges, piece by piece (for tokenizers without offsets)."""
    cuts = sorted({0, len(text), *(edge for span in spans for edge in span)})
    ids: list[int] = []
    trained: list[bool] = []
    for start, end in itertools.pairwise(cuts):
        piece = list(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        inside = any(a <= start and end <= b for a, b in spans)
        ids += piece
        trained += [inside] * len(piece)
    return Encoded(ids, trained)


def _apply(tokenizer: Any, messages: Messages, template: str | None, source: str, where: str, **kwargs: Any) -> Any:
    """tokenizer.apply_chat_template, with its template errors as one-line lorakit errors: a template that is
    not valid Jinja is a config error; one that refuses a conversation (raise_exception) is a bad row."""
    import jinja2  # what transformers renders templates with (torch depends on it too)

    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, **kwargs)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{source}: not a valid Jinja template: {exc.message} (line {exc.lineno}); fix it, or "
                          "unset data.chat_template to use the tokenizer's own") from None
    except (jinja2.TemplateError, TypeError) as exc:
        raise DataError(f"{where}: the chat template ({source}) cannot render this conversation: {exc}") from None
