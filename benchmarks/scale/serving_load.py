"""The two contenders of the serving benchmark, run on the same list of jobs.

lorakit: `lorakit serve`'s app in-process on loopback, `clients` threads each sending one /v1/completions request
at a time (keep-alive HTTP, token-id prompts, greedy) and taking the next job from a shared list when it returns.
baseline: what a user writes without a LoRA server: transformers + PEFT, the same jobs in arrival order in batches of
`clients`, each batch one left-padded `generate(adapter_names=...)` call; a job's latency is its batch's time."""

from __future__ import annotations

import http.client
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from benchmarks.scale.serving_fixture import Job


@dataclass
class Result:
    seconds: float
    tokens: int
    latencies: list[float]
    texts: list[str]  # per job, in job order
    errors: list[str] = field(default_factory=list)
    rows_per_forward: float | None = None
    loads: int | None = None
    cpu_seconds: float = float("nan")  # this process's CPU time during the run (server, clients, HTTP)

    @property
    def tok_cpu_s(self) -> float:
        """Generated tokens per CPU second: less sensitive than tok/s to other jobs on a shared machine."""
        return self.tokens / self.cpu_seconds

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    def pct(self, q: float) -> float:
        """The q-quantile latency in ms (nearest rank)."""
        lat = sorted(self.latencies)
        return 1e3 * lat[min(len(lat) - 1, max(0, round(q * len(lat)) - 1))]

    @property
    def mean_ms(self) -> float:
        return 1e3 * statistics.mean(self.latencies)


class Server:
    """lorakit's server on 127.0.0.1 for one adapter folder; `run(jobs, clients)` drives it."""

    def __init__(self, model, tokenizer, adapter_dir: Path, max_resident: int, max_batch: int = 32, **extra) -> None:
        from lorakit.serve import BackgroundServer, EngineSettings, ServeConfig, build

        config = ServeConfig(max_resident=max_resident, max_tokens=256, **extra,
                             engine=EngineSettings(max_batch_size=max_batch, batch_window_s=0.005, max_queue=1024))
        self.app, self.engine = build(model, tokenizer, adapter_dir, config)
        self.server = BackgroundServer(self.app, self.engine)

    def __enter__(self) -> Server:
        self.server.__enter__()
        parsed = urlparse(self.server.url)
        self.host, self.port = parsed.hostname, parsed.port
        return self

    def warm_up(self, jobs: list[Job]) -> None:
        """Server start-up work left out of the timing: the first use wraps the layers and allocates every slot
        bank (once per server), and the first forwards are slow; then the slots are emptied again."""
        errors = self.run(jobs, len(jobs)).errors
        if errors:
            raise RuntimeError(f"warm-up failed: {errors[0]}")
        cache = self.engine.cache
        for name in list(cache.resident):
            self.engine.run_command(lambda name=name: cache.unload(name)).result()

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    def _metric(self, name: str) -> tuple[float, float]:
        histogram = self.engine.metrics  # read in-process: the sum and count of a histogram over its labels
        text = histogram.render() if hasattr(histogram, "render") else ""
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith(name + "_sum"):
                total += float(line.split()[-1])
            elif line.startswith(name + "_count"):
                count += float(line.split()[-1])
            elif line.startswith(name) and not line.startswith(name + "_") and not line.startswith("#"):
                total, count = total + float(line.split()[-1]), 1
        return total, count

    def run(self, jobs: list[Job], clients: int) -> Result:
        texts: list[str | None] = [None] * len(jobs)
        latencies, errors, tokens = [], [], [0]
        lock, cursor = threading.Lock(), [0]
        rows_before, forwards_before = self._metric("lorakit_batch_size")
        loads_before, _ = self._metric("lorakit_adapter_loads_total")

        def client() -> None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
            while True:
                with lock:
                    index = cursor[0]
                    cursor[0] += 1
                if index >= len(jobs):
                    break
                job = jobs[index]
                body = json.dumps({"model": job.adapter, "prompt": list(job.prompt_ids), "max_tokens": job.max_tokens,
                                   "temperature": 0})
                start = time.perf_counter()
                try:
                    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    payload = json.loads(response.read())
                except Exception as exc:  # counted and reported: a benchmark with errors is not a result
                    errors.append(f"{job.adapter}: {type(exc).__name__}: {exc}")
                    connection.close()
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
                    continue
                seconds = time.perf_counter() - start
                if response.status != 200:
                    errors.append(f"{job.adapter}: HTTP {response.status} {str(payload)[:200]}")
                    continue
                with lock:
                    latencies.append(seconds)
                    tokens[0] += payload["usage"]["completion_tokens"]
                texts[index] = payload["choices"][0]["text"]
            connection.close()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        cpu, start = cpu_time(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed, cpu = time.perf_counter() - start, cpu_time() - cpu
        rows_after, forwards_after = self._metric("lorakit_batch_size")
        loads_after, _ = self._metric("lorakit_adapter_loads_total")
        forwards = forwards_after - forwards_before
        return Result(elapsed, tokens[0], latencies, [t or "" for t in texts], errors,
                      (rows_after - rows_before) / forwards if forwards else None, int(loads_after - loads_before),
                      cpu)


def baseline(model, tokenizer, adapter_dir: Path, jobs: list[Job], clients: int) -> Result:
    """transformers + PEFT: every adapter the jobs use loaded into one PeftModel, batches of `clients` jobs."""
    from peft import PeftModel

    names = sorted({job.adapter for job in jobs})
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir / names[0]), adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(str(adapter_dir / name), adapter_name=name)
    peft_model.eval()
    warm = torch.tensor([list(jobs[0].prompt_ids)] * 2)
    with torch.inference_mode():  # the first generate call's set-up, left out of the timing as for lorakit
        peft_model.generate(input_ids=warm, attention_mask=torch.ones_like(warm), adapter_names=names[:1] * 2,
                            max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    texts, latencies, tokens = [], [], 0
    cpu, start = cpu_time(), time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(jobs), clients):
            batch = jobs[first:first + clients]
            width = max(len(job.prompt_ids) for job in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, job in enumerate(batch):
                ids[i, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
                mask[i, width - len(job.prompt_ids):] = 1
            begun = time.perf_counter()
            out = peft_model.generate(input_ids=ids, attention_mask=mask, adapter_names=[j.adapter for j in batch],
                                      max_new_tokens=max(job.max_tokens for job in batch), do_sample=False,
                                      pad_token_id=pad)
            took = time.perf_counter() - begun
            for i, job in enumerate(batch):
                new = out[i, width:].tolist()[:job.max_tokens]
                if eos in new:
                    new = new[:new.index(eos)]
                tokens += len(new)
                texts.append(tokenizer.decode(new, skip_special_tokens=True))
                latencies.append(took)
    elapsed, cpu = time.perf_counter() - start, cpu_time() - cpu
    peft_model.unload()  # the base layers back in place, for the next run
    return Result(elapsed, tokens, latencies, texts, cpu_seconds=cpu)


def cpu_time() -> float:
    times = os.times()
    return times.user + times.system
