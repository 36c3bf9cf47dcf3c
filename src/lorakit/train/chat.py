"""How chat rows are read: the keys that hold a message's role and text, how the data's role names map to
lorakit's (system, user, assistant, tool), and which chat template renders the conversation.

    chat      {"messages": [{"role": "user", "content": "Hi"}, ...]}        keys: data.role_key / data.content_key
    sharegpt  {"conversations": [{"from": "human", "value": "Hi"}, ...]}   keys: "from" / "value" (or role / content)

Role names are mapped by DEFAULT_ROLE_MAP (ShareGPT's human -> user, gpt -> assistant) and then data.role_map,
which extends or overrides it, e.g. {"bot": "assistant"}. The same mapping serves both formats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError
from lorakit.prompts import CHAT_ROLES

DEFAULT_KEYS = ("role", "content")  # DataConfig's role_key / content_key defaults
SHAREGPT_KEYS = ("from", "value")
DEFAULT_ROLE_MAP = {**{role: role for role in CHAT_ROLES}, "human": "user", "gpt": "assistant"}
TEMPLATE_MARKS = ("{{", "{%")  # a data.chat_template value holding one of these is Jinja text, else a file path


@dataclass(frozen=True)
class ChatOptions:
    role_key: str = DEFAULT_KEYS[0]
    content_key: str = DEFAULT_KEYS[1]
    role_map: Mapping[str, str] = field(default_factory=dict)  # data.role_map: over DEFAULT_ROLE_MAP
    template: str | None = None  # Jinja text replacing the tokenizer's chat_template; None: the tokenizer's
    template_source: str = "the tokenizer's chat_template"  # where the template came from, for messages

    @property
    def roles(self) -> dict[str, str]:
        """The data's role name -> lorakit's."""
        return {**DEFAULT_ROLE_MAP, **self.role_map}

    def keys(self, sharegpt: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(role keys, content keys) to try in order. ShareGPT rows use from / value, or role / content (some
        datasets keep a 'conversations' column with OpenAI-style messages); a key set in the config wins."""
        if not sharegpt:
            return (self.role_key,), (self.content_key,)
        role = (self.role_key,) if self.role_key != DEFAULT_KEYS[0] else (SHAREGPT_KEYS[0], DEFAULT_KEYS[0])
        content = (self.content_key,) if self.content_key != DEFAULT_KEYS[1] else (SHAREGPT_KEYS[1], DEFAULT_KEYS[1])
        return role, content


def chat_options(role_key: str, content_key: str, role_map: Mapping[str, str] | None,
                 chat_template: str | None) -> ChatOptions:
    """ChatOptions from DataConfig's values; a chat_template file is read here."""
    if chat_template is None:
        return ChatOptions(role_key, content_key, dict(role_map or {}))
    text, source = load_chat_template(chat_template)
    return ChatOptions(role_key, content_key, dict(role_map or {}), text, source)


def is_template_text(value: str) -> bool:
    return any(mark in value for mark in TEMPLATE_MARKS)


def load_chat_template(value: str) -> tuple[str, str]:
    """(Jinja text, where it came from) for a data.chat_template value: the text itself, or a file holding it."""
    if is_template_text(value):
        return value, "data.chat_template"
    path = Path(value).expanduser()
    source = f"data.chat_template file {value}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.__class__.__name__}: {exc}); give a readable UTF-8 "
                          "Jinja file, or the template text itself") from None
    if not text.strip():
        raise ConfigError(f"{source}: the file is empty; it should hold a Jinja chat template")
    return text, source


def check_chat_config(role_key: Any, content_key: Any, role_map: Any, chat_template: Any) -> None:
    """DataConfig's validation of the chat settings (ConfigError, one line each)."""
    for name, value in (("role_key", role_key), ("content_key", content_key)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"data.{name}={value!r}: expected the key of each message that holds its "
                              f"{name.split('_')[0]}, e.g. {SHAREGPT_KEYS[name == 'content_key']!r}")
    if role_map is not None:
        if not isinstance(role_map, Mapping):
            raise ConfigError(f"data.role_map={role_map!r}: expected a mapping from the data's role names to "
                              f"{list(CHAT_ROLES)}, e.g. {{bot: assistant}}")
        for source, target in role_map.items():
            if not isinstance(source, str) or target not in CHAT_ROLES:
                raise ConfigError(f"data.role_map: {source!r}: {target!r} should map a role name to one of "
                                  f"{list(CHAT_ROLES)}")
    if chat_template is not None:
        if not isinstance(chat_template, str) or not chat_template.strip():
            raise ConfigError(f"data.chat_template={chat_template!r}: expected Jinja text or the path of a file "
                              "holding it, or null for the tokenizer's own")
        if not is_template_text(chat_template) and not Path(chat_template).expanduser().is_file():
            raise ConfigError(f"data.chat_template={chat_template!r}: no such file, and not Jinja text (no "
                              "'{{' or '{%'); give a template file's path or the template itself")
