"""Read adapters kept in memory (serve/host_store.py): an evicted adapter comes back without reading its files and
still equals the library's; a changed file or an unload makes the next use read the files again; reads run ahead on
another thread, and a running batch goes on while a joining request's adapter is read."""

from __future__ import annotations

import copy
import shutil
import threading
import time

import torch

import lorakit
from lorakit.mixed import use_plan
from lorakit.serve.batching import Engine, EngineSettings, Request
from lorakit.serve.cache import AdapterCache
from lorakit.serve.generation import SamplingParams


def counting(cache: AdapterCache) -> list[tuple[str, str]]:
    """Record (adapter, thread name) for every read of the adapter files."""
    calls, read = [], cache.read

    def recorded(name):
        calls.append((name, threading.current_thread().name))
        return read(name)

    cache.store._read = recorded
    return calls


def logits_of(cache: AdapterCache, name: str, ids: torch.Tensor) -> torch.Tensor:
    cache.ensure([name])
    with torch.no_grad(), use_plan(cache.layers(), cache.plan([[(name, 1.0)]])):
        return cache.model(ids).logits


def reference(served, folder, name: str, ids: torch.Tensor) -> torch.Tensor:
    model = copy.deepcopy(served.model)
    lorakit.load_adapter(model, folder / name, adapter_name=name)
    with torch.no_grad():
        return model(ids).logits


def test_an_evicted_adapter_returns_from_memory_and_stays_exact(served):
    cache = AdapterCache(copy.deepcopy(served.model), served.adapter_dir, max_resident=1)
    reads = counting(cache)
    ids = torch.randint(3, len(served.tokenizer), (1, 6), generator=torch.Generator().manual_seed(0))
    for name in ("alpha", "beta", "alpha", "delta", "beta"):  # one slot: every step evicts the previous adapter
        torch.testing.assert_close(logits_of(cache, name, ids), reference(served, served.adapter_dir, name, ids))
    assert [name for name, _ in reads] == ["alpha", "beta", "delta"]


def test_a_changed_file_or_an_unload_reads_the_files_again(served, tmp_path):
    folder = tmp_path / "adapters"
    shutil.copytree(served.adapter_dir / "beta", folder / "swap")
    cache = AdapterCache(copy.deepcopy(served.model), folder, max_resident=1)
    reads = counting(cache)
    ids = torch.randint(3, len(served.tokenizer), (1, 6), generator=torch.Generator().manual_seed(1))
    before = logits_of(cache, "swap", ids)
    cache.unload("swap")
    logits_of(cache, "swap", ids)
    assert len(reads) == 2  # unloaded: forgotten
    cache.store.prefetch("swap")  # resident and kept: nothing to read
    assert len(reads) == 2
    for part in ("adapter_model.safetensors", "adapter_config.json"):  # a new adapter under the same name
        shutil.copy(served.adapter_dir / "alpha" / part, folder / "swap" / part)
    cache.install(cache.store.take("swap"))
    assert len(reads) == 3
    after = logits_of(cache, "swap", ids)
    torch.testing.assert_close(after, reference(served, served.adapter_dir, "alpha", ids))
    assert not torch.allclose(before, after)


def test_reads_run_ahead_on_the_reader_thread(served):
    cache = AdapterCache(copy.deepcopy(served.model), served.adapter_dir, max_resident=2)
    reads = counting(cache)
    cache.prefetch(["gamma"])
    deadline = time.monotonic() + 10
    while not cache.ready("gamma") and time.monotonic() < deadline:
        time.sleep(0.01)
    cache.ensure(["gamma"])
    assert reads == [("gamma", reads[0][1])] and reads[0][1].startswith("lorakit-adapter-reader")
    cache.close()


def test_a_running_batch_is_not_held_up_by_a_joining_requests_read(served):
    """The read of a joining request's adapter is slowed to 1 s: the running row must finish meanwhile (read on
    the model thread, it would wait), and the joining request still gets the text its adapter gives alone."""
    cache = AdapterCache(copy.deepcopy(served.model), served.adapter_dir, max_resident=4)
    read = cache.read

    read_done = []

    def slow(name):
        if name == "beta":
            time.sleep(1.0)
            read_done.append(time.perf_counter())
        return read(name)

    cache.store._read = slow
    engine = Engine(cache.model, served.tokenizer, cache, EngineSettings(max_batch_size=4, batch_window_s=0.0))
    done: dict[str, tuple[float, str]] = {}
    texts: dict[str, list[str]] = {"alpha": [], "beta": []}

    def request(name: str, tokens: int) -> Request:
        def finish(reason, n):
            done[name] = (time.perf_counter(), "".join(texts[name]))

        return Request(served.tokenizer("the cat sat")["input_ids"], SamplingParams(tokens, 0.0), [(name, 1.0)],
                       name, texts[name].append, finish, lambda status, message: done.setdefault(name, (0, message)))

    engine.start()
    try:
        engine.submit(request("alpha", 60))
        time.sleep(0.05)
        engine.submit(request("beta", 4))
        deadline = time.monotonic() + 30
        while len(done) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    assert set(done) == {"alpha", "beta"}
    assert done["alpha"][0] < read_done[0] < done["beta"][0]  # alpha never waited for beta's read
    model = copy.deepcopy(served.model)
    lorakit.load_adapter(model, served.adapter_dir / "beta", adapter_name="beta")
    lorakit.set_adapter(model, "beta")
    ids = torch.tensor([served.tokenizer("the cat sat")["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    tokens = out[0, ids.shape[1]:].tolist()
    if 2 in tokens:  # EOS ends the row in the server
        tokens = tokens[:tokens.index(2)]
    assert done["beta"][1] == served.tokenizer.decode(tokens, skip_special_tokens=True)
