"""Request bodies of the OpenAI-compatible endpoints, validated with pydantic (ships with FastAPI).

Unknown fields are ignored, as OpenAI clients send optional ones freely; fields of features this server lacks
(logprobs, echo, n > 1, penalties, tools, ...) are refused when they ask for the feature, never silently dropped.
Extension: `adapter_weights` (a {name: weight} object, or a list of {"name", "weight"}) serves the weighted sum of
those adapters' outputs for this request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lorakit.errors import LorakitError

# field -> values that mean "feature off"
UNSUPPORTED: dict[str, tuple] = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
    "tools": (None, []), "functions": (None, []), "suffix": (None, ""), "response_format": (None, {"type": "text"}),
}


class InvalidRequest(LorakitError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AdapterWeight(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    weight: float


class Common(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1)  # one choice per request
    user: str | None = None
    adapter_weights: dict[str, float] | list[AdapterWeight] | None = Field(None, max_length=16)

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> Common:
        for key, value in (self.model_extra or {}).items():
            if key in UNSUPPORTED and value not in UNSUPPORTED[key]:
                raise ValueError(f"{key}={value!r} is not supported by this server")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(len(s) > 256 for s in stops):
            raise ValueError("stop: at most 4 strings of at most 256 characters")
        return self

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def weights(self) -> list[tuple[str, float]] | None:
        if not self.adapter_weights:
            return None
        if isinstance(self.adapter_weights, dict):
            return list(self.adapter_weights.items())
        return [(w.name, w.weight) for w in self.adapter_weights]

    @property
    def sampling_temperature(self) -> float:
        return 1.0 if self.temperature is None else self.temperature


class CompletionRequest(Common):
    prompt: str | list[int] | list[str] = Field(min_length=1)

    def prompt_ids(self, tokenizer) -> list[int]:
        prompt = self.prompt
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise InvalidRequest(f"prompt: one prompt per request, got {len(prompt)}", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = list(tokenizer(prompt)["input_ids"])
        else:
            vocab = len(tokenizer)
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequest(f"prompt: token id {bad} is outside the vocabulary [0, {vocab})", "prompt")
            ids = list(prompt)
        if not ids:
            raise InvalidRequest("prompt: the prompt has no tokens", "prompt")
        return ids


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1, max_length=512)

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


def parse_request(kind: type[Common], body: dict) -> Any:
    """Validate a JSON body; the first problem becomes one readable message naming the field."""
    try:
        parsed = kind.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "body"
        raise InvalidRequest(f"{where}: {error['msg']}", str(error["loc"][0]) if error["loc"] else None) from None
    parsed.temperature, parsed.top_p = parsed.sampling_temperature, 1.0 if parsed.top_p is None else parsed.top_p
    return parsed
