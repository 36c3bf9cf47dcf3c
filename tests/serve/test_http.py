"""HTTP edges of the server: malformed input gets a 4xx JSON error (never a crash), limits, auth, management,
adapter names that try to leave the adapter directory, /health and /metrics."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest

from tests.serve.conftest import API_KEY


def call(server, method: str, path: str, body=None, raw: bytes | None = None, key: str | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def error_of(server, *args, **kwargs) -> tuple[int, dict]:
    status, text = call(server, *args, **kwargs)
    payload = json.loads(text)
    assert set(payload["error"]) >= {"message", "type", "param", "code"}, payload
    return status, payload["error"]


GOOD = {"model": "base", "prompt": "the cat", "max_tokens": 2}


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"prompt": "the cat"}, 400, "model"),
    ({**GOOD, "max_tokens": 10_000}, 400, "limit of 64"),
    ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ({**GOOD, "temperature": 5}, 400, "temperature"),
    ({**GOOD, "top_p": 0}, 400, "top_p"),
    ({**GOOD, "logprobs": 3}, 400, "logprobs=3 is not supported"),
    ({**GOOD, "n": 2}, 400, "n"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
    ({**GOOD, "prompt": [1, 2, 99999]}, 400, "outside the vocabulary"),
    ({**GOOD, "prompt": "the " * 200}, 400, "context"),
    ({**GOOD, "prompt": ["a", "b"]}, 400, "one prompt per request"),
    ({**GOOD, "stream": "maybe"}, 400, "stream"),
    ({**GOOD, "adapter_weights": {"alpha": "x"}}, 400, "adapter_weights"),
    ({**GOOD, "adapter_weights": {"nope": 1.0}}, 404, "does not exist"),
    ({**GOOD, "model": "nope"}, 404, "does not exist"),
])
def test_bad_completion_requests_get_a_4xx_json_error(server, body, status, needle):
    got, error = error_of(server, "POST", "/v1/completions", body)
    assert got == status and needle in error["message"], error


def test_malformed_bodies(server):
    assert error_of(server, "POST", "/v1/completions", raw=b"{not json")[0] == 400
    assert error_of(server, "POST", "/v1/completions", raw=b"[1, 2]")[0] == 400
    assert error_of(server, "POST", "/v1/completions", raw=b'{"model": "base", "prompt": "a", "temperature": NaN}')[0] \
        == 400
    assert error_of(server, "POST", "/v1/chat/completions", {"model": "base", "messages": []})[0] == 400
    assert error_of(server, "POST", "/v1/chat/completions", {"model": "base", "messages": [{"role": "x"}]})[0] == 400
    assert error_of(server, "GET", "/v1/nothing-here")[0] == 404
    assert error_of(server, "GET", "/v1/completions")[0] == 405


def test_request_size_limit_with_and_without_content_length(server):
    big = {**GOOD, "prompt": "x" * (70 << 10)}
    assert error_of(server, "POST", "/v1/completions", big)[0] == 413
    url = urlparse(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()
    payload = json.dumps(big).encode()
    for start in range(0, len(payload), 8192):
        piece = payload[start:start + 8192]
        connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]["message"]


@pytest.mark.parametrize("name", ["../adapters/alpha", "..", "alpha/../beta", "/etc/passwd", "%2e%2e", "base/..",
                                  "alpha\x00", ".alpha", "a" * 65])
def test_adapter_names_cannot_leave_the_adapter_directory(server, name):
    status, _ = error_of(server, "POST", "/v1/completions", {**GOOD, "model": name})
    assert status == 404
    status, _ = error_of(server, "POST", "/v1/adapters/load", {"name": name}, key=API_KEY)
    assert status == 400


def test_management_needs_the_api_key(server):
    assert error_of(server, "GET", "/v1/adapters")[0] == 401
    assert error_of(server, "POST", "/v1/adapters/load", {"name": "beta"}, key="wrong")[0] == 401
    assert error_of(server, "POST", "/v1/adapters/unload", {"name": "beta"})[0] == 401


def test_load_list_unload(server):
    status, text = call(server, "POST", "/v1/adapters/load", {"name": "beta"}, key=API_KEY)
    assert status == 200, text
    loaded = json.loads(text)
    assert loaded["name"] == "beta" and loaded["swap_seconds"] < 1.0
    listing = json.loads(call(server, "GET", "/v1/adapters", key=API_KEY)[1])
    assert "beta" in listing["resident"] and listing["available"] == ["alpha", "beta", "delta", "gamma"]
    assert call(server, "POST", "/v1/adapters/unload", {"name": "beta"}, key=API_KEY)[0] == 200
    assert "beta" not in json.loads(call(server, "GET", "/v1/adapters", key=API_KEY)[1])["resident"]
    assert error_of(server, "POST", "/v1/adapters/unload", {"name": "beta"}, key=API_KEY)[0] == 404
    assert error_of(server, "POST", "/v1/adapters/load", {"name": "missing"}, key=API_KEY)[0] == 404
    # an unloaded adapter is still served: a request loads it again
    assert call(server, "POST", "/v1/completions", {**GOOD, "model": "beta"})[0] == 200


def test_health_and_metrics(server):
    assert call(server, "POST", "/v1/completions", {**GOOD, "model": "alpha"})[0] == 200
    assert call(server, "POST", "/v1/completions", {**GOOD, "model": "nope"})[0] == 404
    status, text = call(server, "GET", "/health")
    assert status == 200 and json.loads(text)["status"] == "ok"
    status, text = call(server, "GET", "/metrics")
    assert status == 200
    assert "# TYPE lorakit_requests_total counter" in text
    assert 'lorakit_requests_total{adapter="alpha",endpoint="completions",status="200"}' in text
    assert 'lorakit_completion_tokens_total{adapter="alpha"}' in text
    assert 'lorakit_request_seconds_bucket{adapter="alpha",le="+Inf"}' in text
    assert 'lorakit_requests_total{adapter="-",endpoint="completions",status="404"}' in text  # errors count too
