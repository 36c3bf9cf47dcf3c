"""Putting the pieces together: model + tokenizer + adapter directory -> Engine + ASGI app, and running it with
uvicorn (in the foreground for `lorakit serve`, or in a background thread for tests and benchmarks)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.serve.batching import Engine, EngineSettings
from lorakit.serve.cache import HOST_BYTES, AdapterCache


@dataclass
class ServeConfig:
    max_resident: int = 8  # adapters kept in memory at once (LRU beyond)
    host_bytes: int = HOST_BYTES  # read adapters kept in memory beyond the slots (LRU); 0: every load reads files
    engine: EngineSettings = field(default_factory=EngineSettings)
    max_request_bytes: int = 1 << 20
    max_tokens: int = 512
    max_prompt_tokens: int = 4096
    api_key: str | None = None  # guards /v1/adapters*; None disables adapter management
    protect_inference: bool = False  # also require the key on /v1/models and the completion endpoints


def build(model, tokenizer, adapter_dir: str | Path | None, config: ServeConfig | None = None,
          named: dict[str, Path] | None = None):
    """(app, engine) for a base model (eval mode, frozen), a directory of adapters and adapters named one by one
    (name -> folder). Start with engine.start()."""
    from lorakit.serve.app import Limits, create_app  # FastAPI is an optional dependency

    config = config or ServeConfig()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    cache = AdapterCache(model, adapter_dir, config.max_resident, named, config.host_bytes)
    engine = Engine(model, tokenizer, cache, config.engine)
    limits = Limits(max_request_bytes=config.max_request_bytes, max_tokens=config.max_tokens,
                    default_chat_tokens=min(256, config.max_tokens), max_prompt_tokens=config.max_prompt_tokens)
    app = create_app(engine, limits, config.api_key, config.protect_inference)
    return app, engine


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise LorakitError("the lorakit server needs uvicorn and FastAPI: pip install 'lorakit[serve]' "
                           "(or pip install fastapi uvicorn)") from None
    return uvicorn


def _http_protocol():
    """uvicorn's own protocol, answering unparseable requests with a JSON 400 and a close that loses no reply."""
    from lorakit.serve.protocol import LingeringHTTPProtocol  # imports uvicorn, an optional dependency

    return LingeringHTTPProtocol


def serve_forever(app, engine: Engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    uvicorn = _uvicorn()
    engine.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, http=_http_protocol())
    finally:
        engine.stop()


class BackgroundServer:
    """Serve on 127.0.0.1 (a free port) from a thread: `with BackgroundServer(app, engine) as server: server.url`."""

    def __init__(self, app, engine: Engine, host: str = "127.0.0.1", port: int = 0) -> None:
        uvicorn = _uvicorn()
        self.engine = engine
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="off", http=_http_protocol()))
        self.thread = threading.Thread(target=self.server.run, name="lorakit-http", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.engine.start()
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise LorakitError("the HTTP server did not start within 30 s")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.stop()
