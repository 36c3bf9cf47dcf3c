"""A row that fails at run time fails alone: its request gets a 500 (or an error event in its stream) and the error
is logged with the request id, while the other rows of its batch go on and give the text they give when run alone.

The failure is injected for one marked request (seed 666) in the per-row set-up (the row's random generator) or in
the sampler after a few tokens, in a batch of several requests queued before the engine starts (one batch)."""

from __future__ import annotations

import copy
import json
import logging
import threading

import pytest

import lorakit.serve.generation as generation
from lorakit.serve.batching import Engine, EngineSettings, Request
from lorakit.serve.cache import AdapterCache
from lorakit.serve.generation import SamplingParams
from tests.serve.test_http import call

MARK = 666  # the seed of the request whose row fails
JOBS = [  # (adapters, prompt, params): greedy rows, a seeded sampled row, the marked row
    ([], [1, 4, 13], SamplingParams(max_tokens=8, temperature=0)),
    ([("alpha", 1.0)], [1, 20, 21, 9], SamplingParams(max_tokens=8, temperature=0)),
    ([("beta", 1.0)], [1, 7, 8], SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=5)),
    ([("alpha", 1.0)], [1, 4, 13, 38], SamplingParams(max_tokens=8, temperature=1.0, seed=MARK)),
]


class Injected(RuntimeError):
    pass


def inject(monkeypatch, where: str) -> None:
    """Make the marked row fail in its set-up, or at its third sampled token."""
    if where == "setup":
        real_generator = generation._generator

        def failing_generator(seed):
            if seed == MARK:
                raise Injected("injected set-up failure")
            return real_generator(seed)

        monkeypatch.setattr(generation, "_generator", failing_generator)
    else:
        real_sample, drawn = generation.sample, [0]

        def failing_sample(logits, params, generator):
            if params.seed == MARK:
                drawn[0] += 1
                if drawn[0] % 3 == 0:  # each marked request fails at its third token
                    raise Injected("injected sampling failure")
            return real_sample(logits, params, generator)

        monkeypatch.setattr(generation, "sample", failing_sample)


class Outcome:
    def __init__(self, i: int, adapters, prompt, params) -> None:
        self.text: list[str] = []
        self.result: tuple | None = None
        self.done = threading.Event()
        self.request = Request(prompt, params, adapters, "-", self.text.append, self._finish, self._fail,
                               request_id=f"req-{i}")

    def _finish(self, reason, n) -> None:
        self.result = ("ok", reason, n)
        self.done.set()

    def _fail(self, status, message) -> None:
        self.result = ("error", status, message)
        self.done.set()


def run(engine: Engine, indices: list[int]) -> list[Outcome]:
    outcomes = [Outcome(i, *JOBS[i]) for i in indices]
    for outcome in outcomes:
        engine.submit(outcome.request)
    assert all(o.done.wait(60) for o in outcomes)
    return outcomes


@pytest.mark.parametrize("where", ["setup", "sampling"])
def test_a_failing_row_fails_alone_and_is_logged(served, monkeypatch, caplog, where):
    inject(monkeypatch, where)
    cache = AdapterCache(copy.deepcopy(served.model), served.adapter_dir, max_resident=3)
    engine = Engine(cache.model, served.tokenizer, cache, EngineSettings(max_batch_size=8, batch_window_s=0.2))
    everyone = [Outcome(i, *job) for i, job in enumerate(JOBS)]
    for outcome in everyone:  # queued before the engine starts: one batch
        engine.submit(outcome.request)
    caplog.set_level(logging.ERROR, logger="lorakit.serve")
    engine.start()
    try:
        assert all(o.done.wait(60) for o in everyone)
        batched_forwards = engine.metrics.summary("lorakit_batch_size")[1]
        alone = [run(engine, [i])[0] for i in range(len(JOBS) - 1)]
    finally:
        engine.stop()
    *others, marked = everyone
    assert batched_forwards <= 9, "the requests were not batched together"  # 1 prefill + 7 decoding steps (+1)
    for got, ref in zip(others, alone, strict=True):
        assert got.result == ref.result == ("ok", "length", 8)
        assert "".join(got.text) == "".join(ref.text)
    assert marked.result[:2] == ("error", 500) and "Injected" in marked.result[2], marked.result
    assert "req-3" in marked.result[2]  # the client can quote it to the operator
    logged = [r for r in caplog.records if r.name == "lorakit.serve" and r.levelno >= logging.ERROR]
    assert any("req-3" in r.getMessage() and r.exc_info and isinstance(r.exc_info[1], Injected) for r in logged)


def test_over_http_the_failing_request_gets_a_500_and_the_stream_an_error_event(server, monkeypatch, caplog):
    inject(monkeypatch, "sampling")
    caplog.set_level(logging.ERROR, logger="lorakit.serve")
    body = {"model": "alpha", "prompt": "the cat sat", "max_tokens": 8, "temperature": 1.0, "seed": MARK}
    status, text = call(server, "POST", "/v1/completions", body)
    error = json.loads(text)["error"]
    assert status == 500 and error["type"] == "server_error" and "Injected" in error["message"], text
    request_id = error["message"].split("request ")[1].split(")")[0]
    assert request_id.startswith("cmpl-")
    assert any(request_id in r.getMessage() for r in caplog.records if r.name == "lorakit.serve")
    status, text = call(server, "POST", "/v1/completions", {**body, "stream": True})
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    assert "Injected" in json.loads(events[-2])["error"]["message"]
    # the server goes on serving
    assert call(server, "POST", "/v1/completions", {**body, "seed": 1})[0] == 200
