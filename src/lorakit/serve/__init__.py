"""Serving many adapters on one base model: an adapter cache with preallocated slots, dynamic mixed-adapter
batching, and an OpenAI-compatible HTTP API (FastAPI + uvicorn: pip install 'lorakit[serve]').

    from lorakit.serve import ServeConfig, build, serve_forever
    app, engine = build(model, tokenizer, "adapters/", ServeConfig(max_resident=8, api_key="secret"))
    serve_forever(app, engine, port=8000)
"""

from lorakit.serve.batching import Engine, EngineSettings
from lorakit.serve.cache import AdapterCache
from lorakit.serve.generation import SamplingParams
from lorakit.serve.metrics import Metrics
from lorakit.serve.server import BackgroundServer, ServeConfig, build, serve_forever

__all__ = [
    "AdapterCache",
    "BackgroundServer",
    "Engine",
    "EngineSettings",
    "Metrics",
    "SamplingParams",
    "ServeConfig",
    "build",
    "serve_forever",
]
