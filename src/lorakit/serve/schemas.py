"""Request bodies of the OpenAI-compatible endpoints, validated with pydantic (ships with FastAPI).

Validation is strict, as OpenAI's API is: a boolean is a JSON `true`/`false` (not "yes", not 1), an integer is a
JSON integer (not "5", not 5.0), a number is a JSON number (an integer is fine), a string is a string; every number
is range-checked here, so nothing out of range reaches the model thread (a seed is a signed 64-bit integer, as in
OpenAI's API, which `torch.Generator.manual_seed` takes). Unknown fields are ignored, as OpenAI clients send optional
ones freely; fields of features this server lacks (logprobs, echo, n > 1, penalties, tools, ...) are refused when
they ask for the feature, never silently dropped. Extension: `adapter_weights` (a {name: weight} object, or a list
of {"name", "weight"}) serves the weighted sum of those adapters' outputs for this request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorakit.errors import LorakitError

SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's seed: a signed 64-bit integer
MAX_ADAPTER_WEIGHT = 100.0  # |weight| in adapter_weights; beyond it the activations overflow long before it means much
STRICT = ConfigDict(strict=True, allow_inf_nan=False)
Weight = Annotated[float, Field(ge=-MAX_ADAPTER_WEIGHT, le=MAX_ADAPTER_WEIGHT)]
Stop = Annotated[str, Field(max_length=256)]

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
    model_config = ConfigDict(**STRICT, extra="forbid")
    name: str
    weight: Weight


class StreamOptions(BaseModel):
    model_config = ConfigDict(**STRICT, extra="allow")  # newer options are harmless to ignore
    include_usage: bool | None = None


class Common(BaseModel):
    model_config = ConfigDict(**STRICT, extra="allow")

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(None, ge=1)  # the server's limit and the model's context: checked in app.py
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Stop | Annotated[list[Stop], Field(max_length=4)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int | None = Field(None, ge=1, le=1)  # one choice per request
    user: str | None = None
    adapter_weights: dict[str, Weight] | list[AdapterWeight] | None = Field(None, max_length=16)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

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
    model_config = STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = STRICT
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


# what a field that takes several shapes expects, added to the message when the body matched none of them
SHAPES = {
    "prompt": "a string, a list of one string, or a list of token ids",
    "stop": "a string or a list of at most 4 strings",
    "adapter_weights": 'an object {"name": weight} or a list of {"name": ..., "weight": ...}',
    "content": 'a string or a list of {"type": "text", "text": ...} parts',
}


JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
              list: "an array", type(None): "null"}


def parse_request(kind: type[Common], body: dict) -> Any:
    """Validate a JSON body; the first problem becomes one readable message naming the field."""
    try:
        parsed = kind.model_validate(body)
    except ValidationError as exc:
        path, message = _first_problem(body, exc.errors())
        raise InvalidRequest(f"{'.'.join(path) or 'body'}: {message}", path[0] if path else None) from None
    for key, value in (parsed.model_extra or {}).items():
        if key in UNSUPPORTED and value not in UNSUPPORTED[key]:
            raise InvalidRequest(f"{key}: {key}={value!r} is not supported by this server", key)
    parsed.temperature, parsed.top_p = parsed.sampling_temperature, 1.0 if parsed.top_p is None else parsed.top_p
    return parsed


def _first_problem(body: dict, errors: list[dict]) -> tuple[list[str], str]:
    """(path in the body, message) of the first invalid field.

    pydantic reports a field that takes several shapes (`str | list[int]`) once per shape, its locations tagged
    with the shape: ('prompt', 'list[int]', 0). The tags are not in the body, so walking the body drops them. Of
    those reports, one that got past the shape check (the right kind of value, a bad item or length) says most."""
    reports = [(*_body_path(body, error), error) for error in errors]
    field = reports[0][0][:1]
    reports = [report for report in reports if report[0][:1] == field]
    telling = [(path, tags, value, error) for path, tags, value, error in reports
               if not (tags and error["loc"][-1] == tags[-1] and error["type"].endswith("_type"))]
    path, _, value, error = (telling or reports)[0]
    if not telling and path and path[-1] in SHAPES:  # a value of no accepted shape: say which shapes are
        return path, f"expected {SHAPES[path[-1]]}, got {JSON_TYPES.get(type(value), type(value).__name__)}"
    return path, error["msg"]


def _body_path(body: Any, error: dict) -> tuple[list[str], list[str], Any]:
    """The steps of an error's location that exist in the body (as strings), the shape tags between them, and the
    value the steps lead to."""
    path: list[str] = []
    tags: list[str] = []
    here, loc = body, error["loc"]
    for k, step in enumerate(loc):
        if isinstance(here, dict) and isinstance(step, str) and step in here:
            here = here[step]
            path.append(step)
        elif isinstance(here, list) and isinstance(step, int) and 0 <= step < len(here):
            here = here[step]
            path.append(str(step))
        elif error["type"] == "missing" and k == len(loc) - 1:  # a required field the body lacks
            path.append(str(step))
        else:
            tags.append(str(step))
    return path, tags, here
