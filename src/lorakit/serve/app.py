"""The HTTP layer (FastAPI): OpenAI-compatible endpoints, adapter management, /health and /metrics.

Everything here is parsing, validation, auth and response shapes; the model work happens in the Engine's thread.
Every failure is a JSON error in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status
for anything the client can fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from lorakit.errors import LorakitError
from lorakit.serve.batching import Engine, QueueFull, Request
from lorakit.serve.cache import BASE, UnknownAdapter, check_name
from lorakit.serve.generation import SamplingParams, prompt_ids_for_chat
from lorakit.serve.schemas import ChatRequest, CompletionRequest, parse_request

try:
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the lorakit server needs FastAPI and uvicorn: pip install 'lorakit[serve]' "
                      "(or pip install fastapi uvicorn)") from exc

logger = logging.getLogger("lorakit.serve")
MAX_JSON_DEPTH = 32  # OpenAI request bodies nest a few levels; far deeper is an attack on the parser


@dataclass
class Limits:
    max_request_bytes: int = 1 << 20  # request bodies larger than this get 413
    max_tokens: int = 512  # the largest max_tokens a request may ask for
    default_chat_tokens: int = 256  # chat requests without max_tokens
    max_prompt_tokens: int = 4096
    max_composition: int = 4  # adapters in one weighted composition


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def create_app(engine: Engine, limits: Limits | None = None, api_key: str | None = None,
               protect_inference: bool = False) -> FastAPI:
    """The ASGI app. `api_key` guards adapter management (and, with `protect_inference`, everything under /v1)."""
    limits = limits or Limits()
    cache, metrics, tokenizer = engine.cache, engine.metrics, engine.tokenizer
    app = FastAPI(title="lorakit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "error").response()

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception) -> JSONResponse:  # never a crash, never a traceback to the client
        logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc, exc_info=exc)
        return ApiError(500, f"internal error: {type(exc).__name__}", "server_error").response()

    def check_key(request: HttpRequest, management: bool) -> None:
        if not management and not protect_inference:
            return
        if api_key is None:
            raise ApiError(403, "adapter management is disabled: start the server with --api-key", "permission_error")
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", "authentication_error",
                           code="invalid_api_key")

    async def guarded(endpoint: str, request: HttpRequest, handler, management: bool = False):
        start, label = time.perf_counter(), ["-"]
        try:
            check_key(request, management)
            response = await handler(label)
        except ApiError as exc:
            response = exc.response()
        except LorakitError as exc:
            response = ApiError(400, str(exc), param=getattr(exc, "param", None)).response()
        except Exception as exc:  # a bug, never a crash: a JSON 500 (the details stay in the server's log)
            logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                         exc_info=exc)
            response = ApiError(500, f"internal error: {type(exc).__name__}", "server_error").response()
        if not isinstance(response, StreamingResponse):  # streams record themselves when they end
            record(endpoint, label[0], response.status_code, start)
        return response

    def record(endpoint: str, label: str, status: int, start: float) -> None:
        metrics.inc("lorakit_requests_total", {"endpoint": endpoint, "adapter": label, "status": str(status)})
        metrics.observe("lorakit_request_seconds", {"adapter": label}, time.perf_counter() - start)

    # -- plain endpoints ------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "resident_adapters": list(cache.resident), "queue": engine.queue_depth()}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    def model_card(name: str) -> dict:
        card = {"id": name, "object": "model", "created": 0, "owned_by": "lorakit"}
        return card if name == BASE else {**card, "parent": BASE, "root": BASE}

    @app.get("/v1/models")
    async def models(request: HttpRequest):
        async def handler(label):
            names = sorted(set(await asyncio.to_thread(cache.available)) | set(cache.resident))
            return JSONResponse({"object": "list", "data": [model_card(BASE)] + [model_card(n) for n in names]})
        return await guarded("models", request, handler)

    @app.get("/v1/models/{model_id}")
    async def model(request: HttpRequest, model_id: str):
        async def handler(label):
            resolve_adapters(model_id, None)
            return JSONResponse(model_card(model_id))
        return await guarded("models", request, handler)

    # -- generation -------------------------------------------------------------------------------------------------
    def resolve_adapters(model_name: str, weights: list[tuple[str, float]] | None) -> tuple[list, str]:
        if weights:
            if len(weights) > min(limits.max_composition, cache.max_resident):
                raise ApiError(400, f"adapter_weights names {len(weights)} adapters; at most "
                                    f"{min(limits.max_composition, cache.max_resident)}", param="adapter_weights")
            for name, _ in weights:
                require_adapter(name, "adapter_weights")
            return weights, "composition"
        if model_name == BASE:
            return [], BASE
        require_adapter(model_name, "model")
        return [(model_name, 1.0)], model_name

    def require_adapter(name: str, param: str) -> None:
        try:
            check_name(name)
            if not cache.exists(name):
                raise UnknownAdapter(name)
        except LorakitError:
            raise ApiError(404, f"the model {name!r} does not exist; use {BASE!r} or one of the adapters listed by "
                                "/v1/models", param=param, code="model_not_found") from None

    async def generate(request: HttpRequest, endpoint: str, chat: bool):
        start = time.perf_counter()

        async def handler(label):
            body = await read_json(request, limits.max_request_bytes)
            parsed = parse_request(ChatRequest if chat else CompletionRequest, body)
            adapters, label[0] = resolve_adapters(parsed.model, parsed.weights())
            if chat:  # tokenizing a long prompt takes a while: not on the event loop
                prompt = await asyncio.to_thread(prompt_ids_for_chat, tokenizer, parsed.chat_messages())
            else:
                prompt = await asyncio.to_thread(parsed.prompt_ids, tokenizer)
            params = sampling(parsed, len(prompt), chat)
            events, submit = bridge(asyncio.get_running_loop())
            shape = Shape(chat, parsed.model, len(prompt))
            job = Request(prompt, params, adapters, label[0], *submit, request_id=shape.id)
            try:
                engine.submit(job)
            except QueueFull as exc:
                raise ApiError(429, str(exc), "rate_limit_error") from None
            if parsed.stream:
                stream = sse(events, job, shape, parsed.include_usage(),
                             lambda status: record(endpoint, label[0], status, start))
                return StreamingResponse(stream, media_type="text/event-stream")
            return await collect(events, job, shape)

        return await guarded(endpoint, request, handler)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await generate(request, "completions", chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await generate(request, "chat", chat=True)

    def sampling(parsed, prompt_tokens: int, chat: bool) -> SamplingParams:
        if prompt_tokens > limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {prompt_tokens} tokens; this server accepts at most "
                                f"{limits.max_prompt_tokens}", param="prompt", code="context_length_exceeded")
        requested = parsed.requested_max_tokens()
        if requested is not None and requested > limits.max_tokens:
            raise ApiError(400, f"max_tokens={requested} is above this server's limit of {limits.max_tokens}",
                           param="max_tokens")
        room = None if engine.max_positions is None else engine.max_positions - prompt_tokens
        if room is not None and room < 1:
            raise ApiError(400, f"the prompt has {prompt_tokens} tokens, the model's context is "
                                f"{engine.max_positions}", param="prompt", code="context_length_exceeded")
        default = limits.default_chat_tokens if chat else 16
        max_tokens = requested if requested is not None else min(default, room or default)
        if room is not None and max_tokens > room:
            raise ApiError(400, f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                                f"context of {engine.max_positions}", "invalid_request_error", "max_tokens",
                           "context_length_exceeded")
        return SamplingParams(max_tokens, parsed.temperature, parsed.top_p, parsed.stop_list(), parsed.seed)

    # -- adapter management -----------------------------------------------------------------------------------------
    @app.get("/v1/adapters")
    async def list_adapters(request: HttpRequest):
        async def handler(label):
            available = await asyncio.to_thread(cache.available)
            return JSONResponse({"resident": list(cache.resident), "available": available,
                                 "max_resident": cache.max_resident})
        return await guarded("adapters", request, handler, management=True)

    @app.post("/v1/adapters/load")
    async def load(request: HttpRequest):
        async def handler(label):
            name = await adapter_name_from(request)
            prepared = await asyncio.to_thread(cache.read, name)  # disk + checks: off the model thread
            slot = await asyncio.wrap_future(engine.run_command(lambda: cache.install(prepared)))
            metrics.inc("lorakit_adapter_loads_total", {"adapter": name})
            metrics.set("lorakit_adapters_resident", {}, len(cache.resident))
            return JSONResponse({"name": name, "slot": slot, "read_seconds": prepared.read_seconds,
                                 "swap_seconds": cache.last_swap_seconds})
        return await guarded("adapters", request, handler, management=True)

    @app.post("/v1/adapters/unload")
    async def unload(request: HttpRequest):
        async def handler(label):
            name = await adapter_name_from(request)
            removed = await asyncio.wrap_future(engine.run_command(lambda: cache.unload(name)))
            if not removed:
                raise ApiError(404, f"adapter {name!r} is not resident; resident: {list(cache.resident)}",
                               param="name")
            metrics.inc("lorakit_adapter_unloads_total", {"adapter": name})
            metrics.set("lorakit_adapters_resident", {}, len(cache.resident))
            return JSONResponse({"name": name, "unloaded": True})
        return await guarded("adapters", request, handler, management=True)

    async def adapter_name_from(request: HttpRequest) -> str:
        body = await read_json(request, limits.max_request_bytes)
        name = body.get("name")
        try:
            check_name(name)
        except LorakitError as exc:
            raise ApiError(400, str(exc), param="name") from None
        if not cache.exists(name):
            raise ApiError(404, f"no adapter named {name!r} in the adapter directory", param="name",
                           code="model_not_found")
        return name

    return app


# -- request plumbing -------------------------------------------------------------------------------------------------
async def read_json(request: HttpRequest, limit: int) -> dict:
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():  # uvicorn refuses these first; other servers may not
        raise ApiError(400, f"Content-Length {length[:32]!r} is not a number of bytes")
    if length is not None and int(length) > limit:
        raise ApiError(413, f"request body over the limit of {limit} bytes", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body over the limit of {limit} bytes", code="request_too_large")
    too_deep = ApiError(400, f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        data = json.loads(body)
    except RecursionError:  # the parser recursed past Python's limit: far beyond MAX_JSON_DEPTH
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    if _depth_exceeds(data, MAX_JSON_DEPTH):  # deep values would recurse in validation and comparison later
        raise too_deep
    return data


def _depth_exceeds(data: Any, limit: int) -> bool:
    """Whether arrays / objects nest more than `limit` levels (iterative: the depth is not known to be safe)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


def bridge(loop: asyncio.AbstractEventLoop):
    """An asyncio queue the model thread can feed: (queue, (emit, finish, fail))."""
    events: asyncio.Queue = asyncio.Queue()

    def put(item: tuple) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop closed (server shutting down): nobody listens
            loop.call_soon_threadsafe(events.put_nowait, item)

    return events, (lambda text: put(("text", text)), lambda reason, n: put(("done", reason, n)),
                    lambda status, message: put(("error", status, message)))


@dataclass
class Shape:
    """Response bodies of one request (completion or chat)."""

    chat: bool
    model: str
    prompt_tokens: int

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def full(self, text: str, reason: str, completion_tokens: int) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return self._envelope([choice], "chat.completion" if self.chat else "text_completion",
                              usage=self.usage(completion_tokens))

    def chunk(self, text: str | None, reason: str | None, role: bool = False) -> dict:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        return self._envelope([choice], "chat.completion.chunk" if self.chat else "text_completion")

    def _envelope(self, choices: list, obj: str, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}


async def collect(events: asyncio.Queue, job: Request, shape: Shape) -> JSONResponse:
    parts: list[str] = []
    try:
        while True:
            event = await events.get()
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "done":
                return JSONResponse(shape.full("".join(parts), event[1], event[2]))
            else:
                raise ApiError(event[1], event[2], "server_error" if event[1] >= 500 else "invalid_request_error")
    finally:
        job.cancel.set()  # no-op when finished; frees the row if the client went away


async def sse(events: asyncio.Queue, job: Request, shape: Shape, include_usage: bool, done) -> AsyncIterator[bytes]:
    status = 200
    try:
        if shape.chat:
            yield _sse(shape.chunk(None, None, role=True))
        while True:
            event = await events.get()
            if event[0] == "text":
                yield _sse(shape.chunk(event[1], None))
            elif event[0] == "done":
                yield _sse(shape.chunk(None, event[1]))
                if include_usage:
                    yield _sse({**shape.chunk(None, None), "choices": [], "usage": shape.usage(event[2])})
                break
            else:  # headers are sent already: report the error in the stream, as OpenAI does
                status = event[1]
                yield _sse({"error": {"message": event[2], "type": "server_error", "param": None, "code": None}})
                break
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel.set()
        done(status)


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
