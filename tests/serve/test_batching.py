"""The engine's dynamic batching: concurrent requests share batches, adapters load between batches, and a request
whose adapter cannot be loaded fails alone."""

from __future__ import annotations

import copy
import shutil
import threading
import time

import pytest
import torch

from lorakit.serve.batching import Engine, EngineSettings, QueueFull, Request
from lorakit.serve.cache import AdapterCache
from lorakit.serve.generation import SamplingParams


class Outcome:
    def __init__(self) -> None:
        self.text, self.result, self.done = [], None, threading.Event()

    def request(self, prompt, adapters, max_tokens=4) -> Request:
        def finish(reason, n):
            self.result = ("ok", reason, n)
            self.done.set()

        def fail(status, message):
            self.result = ("error", status, message)
            self.done.set()

        return Request(prompt, SamplingParams(max_tokens=max_tokens, temperature=0), adapters,
                       adapters[0][0] if adapters else "base", self.text.append, finish, fail)


@pytest.fixture
def adapter_dir(served, tmp_path):
    for name in ("alpha", "beta", "gamma"):
        shutil.copytree(served.adapter_dir / name, tmp_path / name)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    return tmp_path


def make_engine(served, adapter_dir, **settings) -> Engine:
    cache = AdapterCache(copy.deepcopy(served.model), adapter_dir, max_resident=2)
    return Engine(cache.model, served.tokenizer, cache, EngineSettings(**settings))


def test_concurrent_requests_share_batches_within_the_resident_limit(served, adapter_dir):
    engine = make_engine(served, adapter_dir, max_batch_size=4, batch_window_s=0.2)
    jobs = [[("alpha", 1.0)], [], [("beta", 1.0)], [("alpha", 1.0)], [("gamma", 1.0)], [("alpha", 0.5), ("beta", 1)]]
    outcomes = [Outcome() for _ in jobs]
    for outcome, adapters in zip(outcomes, jobs, strict=True):  # queued before the engine starts: all concurrent
        engine.submit(outcome.request([1, 4, 13], adapters))
    engine.start()
    try:
        assert all(o.done.wait(60) for o in outcomes)
    finally:
        engine.stop()
    assert all(o.result[0] == "ok" for o in outcomes), [o.result for o in outcomes]
    rows, forwards, buckets = engine.metrics.summary("lorakit_batch_size")
    assert rows / forwards > 1.5  # requests were batched ...
    assert sum(buckets[:3]) == forwards  # ... and no forward had more than max_batch_size = 4 rows
    assert engine.metrics.value("lorakit_completion_tokens_total", {"adapter": "alpha"}) == 4 * 3


def test_a_broken_adapter_fails_only_its_requests(served, adapter_dir):
    engine = make_engine(served, adapter_dir, batch_window_s=0.2)
    good, bad = Outcome(), Outcome()
    engine.submit(good.request([1, 4], [("alpha", 1.0)]))
    engine.submit(bad.request([1, 4], [("broken", 1.0)]))
    engine.start()
    try:
        assert good.done.wait(60) and bad.done.wait(60)
    finally:
        engine.stop()
    assert good.result[0] == "ok"
    assert bad.result[:2] == ("error", 400) and "not valid JSON" in bad.result[2]


def test_commands_run_on_the_model_thread_between_batches(served, adapter_dir):
    engine = make_engine(served, adapter_dir)
    engine.start()
    try:
        slot = engine.run_command(lambda: engine.cache.install(engine.cache.read("gamma"))).result(30)
        assert engine.cache.resident == {"gamma": slot}
        failed = engine.run_command(lambda: engine.cache.read("missing"))
        with pytest.raises(Exception, match="no adapter named 'missing'"):
            failed.result(30)
        outcome = Outcome()  # the model thread survived the failing command
        engine.submit(outcome.request([1, 4], [("gamma", 1.0)]))
        assert outcome.done.wait(60) and outcome.result[0] == "ok"
    finally:
        engine.stop()


def test_a_full_queue_is_refused(served, adapter_dir):
    engine = make_engine(served, adapter_dir, max_queue=2)
    engine.submit(Outcome().request([1], []))
    engine.submit(Outcome().request([1], []))
    with pytest.raises(QueueFull, match="2 requests are already waiting"):
        engine.submit(Outcome().request([1], []))


def greedy_text(served, adapter: str | None, prompt: list[int], n: int) -> str:
    model = served.reference(adapter)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=2, pad_token_id=0)
    return served.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)


def test_a_request_joins_a_running_batch_and_leaves_before_it(served, adapter_dir):
    """Continuous batching: B arrives while A generates, joins A's batch, and finishes first; both texts equal
    their requests run alone."""
    engine = make_engine(served, adapter_dir, batch_window_s=0.0)
    slow, fast = Outcome(), Outcome()
    prompt_a, prompt_b = [1, 4, 13, 38, 31, 6, 25, 9, 10], [1, 20, 21]
    engine.submit(slow.request(prompt_a, [("alpha", 1.0)], max_tokens=60))
    engine.start()
    try:
        deadline = time.monotonic() + 60
        while len(slow.text) < 2 and time.monotonic() < deadline:  # A is past its prefill, decoding
            time.sleep(0.001)
        engine.submit(fast.request(prompt_b, [("beta", 1.0)], max_tokens=3))
        assert fast.done.wait(60)
        assert not slow.done.is_set(), "B waited for A's batch to end instead of joining it"
        assert slow.done.wait(60)
    finally:
        engine.stop()
    assert slow.result[:2] == ("ok", "length") and fast.result[0] == "ok"
    assert "".join(fast.text) == greedy_text(served, "beta", prompt_b, 3)
    assert "".join(slow.text) == greedy_text(served, "alpha", prompt_a, 60)
