"""Strict request validation: every field's type and range is checked before a request reaches the model thread,
and a bad one gets a 400 in OpenAI's error shape naming the field (never a 500, never a coerced value)."""

from __future__ import annotations

import json

import pytest

from tests.serve.test_http import GOOD, call, error_of

CHAT = {"model": "base", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 2}
INT64 = 2**63


@pytest.mark.parametrize(("field", "value"), [
    ("seed", 2**64),  # the value: torch.Generator.manual_seed overflows on it
    ("seed", INT64),  # OpenAI's seed is a 64-bit signed integer
    ("seed", -INT64 - 1),
    ("seed", "7"),
    ("seed", 7.0),
    ("stream", "yes"),
    ("stream", 1),
    ("stream", "true"),
    ("max_tokens", "5"),
    ("max_tokens", 5.0),
    ("max_tokens", True),
    ("max_completion_tokens", -1),
    ("n", "1"),
    ("temperature", "0.5"),
    ("temperature", True),
    ("top_p", "0.9"),
    ("top_p", 1.5),
    ("stop", 3),
    ("stop", [1, 2]),
    ("user", 5),
    ("prompt", [1.0, 2.0]),
    ("prompt", [1, "cat"]),
    ("stream_options", "include_usage"),
    ("adapter_weights", {"alpha": 1e6}),
    ("adapter_weights", {"alpha": "1"}),
])
def test_a_bad_completion_field_gets_a_400_naming_it(server, field, value):
    status, error = error_of(server, "POST", "/v1/completions", {**GOOD, field: value})
    assert status == 400, error
    assert error["message"].startswith(field) and error["param"] == field, error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "body"), [
    ("stream_options.include_usage", {**CHAT, "stream": True, "stream_options": {"include_usage": "yes"}}),
    ("messages.0.content", {**CHAT, "messages": [{"role": "user", "content": 5}]}),
    ("messages.0.name", {**CHAT, "messages": [{"role": "user", "content": "hi", "name": 1}]}),
    ("messages.0.role", {**CHAT, "messages": [{"role": "root", "content": "hi"}]}),
])
def test_a_bad_nested_chat_field_gets_a_400_naming_its_path(server, path, body):
    status, error = error_of(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and error["message"].startswith(path), error
    assert error["param"] == path.split(".")[0]


@pytest.mark.parametrize("extra", [
    {"seed": INT64 - 1}, {"seed": -INT64}, {"seed": 0}, {"temperature": 0}, {"temperature": 2}, {"top_p": 1},
    {"stream": None}, {"stream": False}, {"n": 1}, {"max_tokens": None, "seed": None}, {"logprobs": None},
    {"stop": []}, {"stream_options": None},
])
def test_values_at_the_edges_of_each_range_are_served(server, extra):
    status, text = call(server, "POST", "/v1/completions", {**GOOD, "temperature": 1.0, **extra})
    assert status == 200, text


@pytest.mark.parametrize("seed", [INT64 - 1, -INT64])
def test_the_extreme_seeds_give_reproducible_samples(server, seed):
    body = {**GOOD, "prompt": "the dog ran to", "max_tokens": 12, "temperature": 2, "seed": seed}
    texts = []
    for _ in range(2):
        status, reply = call(server, "POST", "/v1/completions", body)
        assert status == 200, reply
        texts.append(json.loads(reply)["choices"][0]["text"])
    assert texts[0] == texts[1]


def test_a_vanishing_temperature_samples_the_greedy_text(server):
    """temperature 5e-324 (the smallest double) is valid: dividing the logits by it overflowed to inf - inf = NaN
    probabilities; the limit of sampling as the temperature goes to 0 is the greedy choice."""
    body = {**GOOD, "prompt": "the dog ran to", "max_tokens": 8}
    greedy = json.loads(call(server, "POST", "/v1/completions", {**body, "temperature": 0})[1])["choices"][0]["text"]
    status, reply = call(server, "POST", "/v1/completions", {**body, "temperature": 5e-324, "seed": 3})
    assert status == 200, reply
    assert json.loads(reply)["choices"][0]["text"] == greedy
