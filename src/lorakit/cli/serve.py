"""Serve a base model and every adapter in a directory over an OpenAI-compatible HTTP API.

Each request picks its adapter with `model` ("base" or an adapter's directory name); concurrent requests are
batched together, each row with its own adapter. Adapters load on first use (at most --max-resident in memory,
least recently used evicted) or through the management endpoints, which need --api-key (or $LORAKIT_API_KEY).
Endpoints: /v1/models, /v1/completions, /v1/chat/completions (streaming too), /v1/adapters (list),
/v1/adapters/load and /v1/adapters/unload ({"name": ...}), /health, /metrics (Prometheus).
Needs the serve extra: pip install 'lorakit[serve]' (FastAPI + uvicorn).

examples:
  lorakit serve --model ./tiny-llama --adapters ./adapters
  lorakit serve --model HuggingFaceTB/SmolLM2-135M-Instruct --adapter sql=my-org/sql-lora@v1
  lorakit serve --model /models/llama --adapters ./adapters --port 8080 --api-key s3cret --max-resident 16
  curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "my-adapter", "prompt": "Hello", "max_tokens": 20}'
  curl localhost:8000/v1/adapters/load -H 'Authorization: Bearer s3cret' -d '{"name": "my-adapter"}'
  python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-'); \\
             print(c.completions.create(model='my-adapter', prompt='Hi', max_tokens=8).choices[0].text)"
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lorakit.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="causal LM: a local directory (config.json, weights, tokenizer), a GGUF file, or a Hub id "
                             "(org/name) from the HF cache")
    parser.add_argument("--revision", help="the model's Hub revision (branch, tag or commit)")
    parser.add_argument("--adapters", help="directory with one sub-directory per adapter")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=SOURCE",
                        help="serve one more adapter under NAME: a local folder or a Hub id org/name[@revision] "
                             "(repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("LORAKIT_API_KEY"),
                        help="key for the adapter management endpoints (default: $LORAKIT_API_KEY; none: disabled)")
    parser.add_argument("--protect-inference", action="store_true",
                        help="require the API key on every /v1 endpoint, not only on adapter management")
    parser.add_argument("--max-resident", type=int, default=8, help="adapters kept in memory at once")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests generated together")
    parser.add_argument("--batch-window-ms", type=float, default=10.0,
                        help="how long a request waits for others to share its batch")
    parser.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    parser.add_argument("--max-prompt-tokens", type=int, default=4096)
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond this get HTTP 429")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="base weights' dtype (auto: as saved)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from lorakit.hf.hub import local_adapter
    from lorakit.hf.models import from_pretrained
    from lorakit.hf.paths import resolve_model_path
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.hf.tokenizer import load_tokenizer
    from lorakit.serve import EngineSettings, ServeConfig, build, serve_forever

    _check(args)
    quiet_transformers()
    _log_to_stderr(args.log_level)
    path = resolve_model_path(args.model, args.revision)
    named = {name: local_adapter(source) for name, source in _named_adapters(args.adapter).items()}
    tokenizer = load_tokenizer(path)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        model = from_pretrained(AutoModelForCausalLM, path, dtype=dtype).to(device)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--model {path}: not a causal language model lorakit can serve ({exc})") from None
    config = ServeConfig(
        max_resident=args.max_resident,
        engine=EngineSettings(args.max_batch_size, args.batch_window_ms / 1000, args.max_queue),
        max_request_bytes=args.max_request_bytes, max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens, api_key=args.api_key, protect_inference=args.protect_inference,
    )
    app, engine = build(model, tokenizer, Path(args.adapters) if args.adapters else None, config, named)
    found = engine.cache.available()
    print(f"lorakit serve: {args.model} on {device} with {len(found)} adapter(s): "
          f"{', '.join(found[:10]) or 'none'}{' ...' if len(found) > 10 else ''}", file=sys.stderr)
    if args.api_key is None:
        print("lorakit serve: no --api-key: adapter management endpoints are disabled", file=sys.stderr)
    serve_forever(app, engine, args.host, args.port, args.log_level)
    return 0


def _log_to_stderr(level: str) -> None:
    """The server's own log (a failed request: its id, the exception, the traceback) on stderr beside uvicorn's."""
    logger = logging.getLogger("lorakit")
    logger.setLevel(level.upper())
    if not logger.handlers:  # once per process
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:  %(name)s: %(message)s"))
        logger.addHandler(handler)


def _check(args: argparse.Namespace) -> None:
    positive = {"--max-resident": args.max_resident, "--max-batch-size": args.max_batch_size,
                "--max-tokens": args.max_tokens, "--max-prompt-tokens": args.max_prompt_tokens,
                "--max-request-bytes": args.max_request_bytes, "--max-queue": args.max_queue}
    for flag, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag}={value}: expected a positive integer")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port={args.port}: expected 0-65535")
    if args.batch_window_ms < 0:
        raise ConfigError(f"--batch-window-ms={args.batch_window_ms}: expected >= 0")
    if args.adapters is None and not args.adapter:
        raise ConfigError("no adapters to serve: give --adapters DIR (one sub-directory per adapter) and/or "
                          "--adapter NAME=SOURCE")
    if args.adapters is not None and not Path(args.adapters).is_dir():
        raise ConfigError(f"--adapters {args.adapters}: no such directory (one sub-directory per adapter expected)")
    _named_adapters(args.adapter)
    if args.protect_inference and not args.api_key:
        raise ConfigError("--protect-inference needs --api-key (or $LORAKIT_API_KEY)")
    if args.host not in LOOPBACK and not args.protect_inference:
        print(f"lorakit serve: warning: listening on {args.host} without --protect-inference: anyone who can reach "
              "it can generate", file=sys.stderr)


def _named_adapters(values: list[str]) -> dict[str, str]:
    """--adapter NAME=SOURCE options as {name: source}; a malformed or repeated one is a one-line error."""
    named: dict[str, str] = {}
    for value in values:
        name, sep, source = value.partition("=")
        if not sep or not name or not source:
            raise ConfigError(f"--adapter {value!r}: expected NAME=SOURCE, e.g. --adapter sql=org/sql-lora@v1")
        if name in named:
            raise ConfigError(f"--adapter {value!r}: the name {name!r} is given twice")
        named[name] = source
    return named
