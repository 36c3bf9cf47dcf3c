"""Malformed HTTP against the real server (uvicorn on 127.0.0.1): a JSON body nested far too deep and a
Content-Length that is not a number both get a clean 400 in OpenAI's error shape, and the server serves the next
request."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

from tests.serve.test_http import GOOD, call, error_of


def test_a_deeply_nested_body_gets_a_400(server):
    depth = 30_000  # far past Python's recursion limit, inside the test server's 64 KiB body limit
    raw = b'{"model": "base", "prompt": "a", "x": ' + b"[" * depth + b"]" * depth + b"}"
    status, error = error_of(server, "POST", "/v1/completions", raw=raw)
    assert status == 400 and "nest" in error["message"], error
    nested: object = 1
    for _ in range(20):  # deep, but not unreasonably so: an unknown field, ignored
        nested = [nested]
    assert call(server, "POST", "/v1/completions", {**GOOD, "x": nested})[0] == 200


def raw_exchange(url: str, head: bytes, body: bytes) -> bytes:
    """Send `head`, then `body` in a second packet (the case where the server used to reset the connection), and
    read the reply until the server closes. A reset raises ConnectionResetError."""
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        sock.sendall(body)
        reply = b""
        deadline = time.monotonic() + 10
        while chunk := sock.recv(65536):
            reply += chunk
            assert time.monotonic() < deadline, "the server neither answered nor closed"
    return reply


def test_a_non_numeric_content_length_gets_a_clean_400(server):
    body = json.dumps(GOOD).encode() * 50
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: abc\r\n\r\n")
    for _ in range(10):  # the reset was a race (about 2 times in 3): one clean answer proves little
        reply = raw_exchange(server.url, head, body)
        status_line, _, rest = reply.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 400 Bad Request", reply[:200]
        headers, _, payload = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower()
        error = json.loads(payload)["error"]
        assert error["type"] == "invalid_request_error" and "Content-Length" in error["message"], error
    assert call(server, "POST", "/v1/completions", GOOD)[0] == 200


def test_lorakit_serve_runs_uvicorn_with_the_lingering_protocol(monkeypatch, served):
    """`lorakit serve` (serve_forever) uses the same protocol as the server tested above."""
    import uvicorn

    from lorakit.serve import ServeConfig, build, serve_forever
    from lorakit.serve.protocol import LingeringHTTPProtocol

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    app, engine = build(served.reference(None), served.tokenizer, served.adapter_dir, ServeConfig())
    serve_forever(app, engine, port=0)
    assert seen["http"] is LingeringHTTPProtocol
