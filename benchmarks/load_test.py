"""Load test of `lorakit serve` on loopback: many concurrent OpenAI clients over several adapters (plain, streaming,
chat, weighted compositions), while a management client keeps loading and unloading adapters. Reports throughput,
p50 / p99 latency and errors (the run fails on any error).

By default it builds a tiny random Llama + tokenizer and adapters of ranks 4-32 in a temp dir and serves them
in-process on 127.0.0.1 with fewer resident slots than adapters (so the LRU evicts and reloads all the time):

    python benchmarks/load_test.py                           # 32 clients, 20 s
    python benchmarks/load_test.py --clients 64 --seconds 60 --max-resident 3
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --api-key KEY --adapters a b   # a running server
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lorakit

RANKS = (4, 8, 16, 32, 8, 4)
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROMPTS = ["the cat is", "name a color", "one two three", "tell me about the sun", "what is a good book",
           "write a short answer"]


def build_fixture(folder: Path, adapters: int, hidden: int, layers: int):
    """A random tiny Llama with a chat template, and `adapters` adapters saved under folder/adapters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.hf.tiny import make_tiny_model

    base = make_tiny_model(folder / "base", "llama", hidden_size=hidden, layers=layers)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    names = []
    for i in range(adapters):
        torch.manual_seed(i)
        adapted = copy.deepcopy(model)
        r = RANKS[i % len(RANKS)]
        targets = "all-linear" if i % 2 == 0 else ["q_proj", "v_proj", "down_proj"]
        config = lorakit.LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False,
                                    use_dora=i == 3)
        lorakit.add_adapter(adapted, config, f"ad{i}")
        lorakit.save_adapter(adapted, folder / "adapters", f"ad{i}")
        names.append(f"ad{i}")
    return model, tokenizer, names


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.tokens = 0
        self.errors: list[str] = []
        self.management = 0

    def ok(self, seconds: float, tokens: int) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.tokens += tokens

    def fail(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


def client_loop(client, names: list[str], stats: Stats, stop: threading.Event, seed: int, max_tokens: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        kind = rng.random()
        model = rng.choice(["base", *names])
        options = dict(max_tokens=rng.randint(1, max_tokens), temperature=rng.choice([0, 0.8]), top_p=0.95)
        if rng.random() < 0.1:  # a weighted composition of two adapters
            pair = rng.sample(names, 2)
            options["extra_body"] = {"adapter_weights": {pair[0]: 0.6, pair[1]: 0.4}}
            model = "base"
        start = time.perf_counter()
        try:
            if kind < 0.45:
                result = client.completions.create(model=model, prompt=rng.choice(PROMPTS), **options)
                tokens = result.usage.completion_tokens
            elif kind < 0.75:
                messages = [{"role": "user", "content": rng.choice(PROMPTS)}]
                result = client.chat.completions.create(model=model, messages=messages, **options)
                tokens = result.usage.completion_tokens
            else:
                stream = client.completions.create(model=model, prompt=rng.choice(PROMPTS), stream=True,
                                                   stream_options={"include_usage": True}, **options)
                chunks = list(stream)
                tokens = chunks[-1].usage.completion_tokens
            stats.ok(time.perf_counter() - start, tokens)
        except Exception as exc:  # every failure is counted and reported
            stats.fail(f"{model}: {type(exc).__name__}: {exc}")


def churn_loop(url: str, key: str, names: list[str], stats: Stats, stop: threading.Event) -> None:
    """Load and unload adapters by name while the clients run."""
    rng = random.Random(99)
    while not stop.wait(0.2):
        name = rng.choice(names)
        action = rng.choice(["load", "unload"])
        request = urllib.request.Request(f"{url}/v1/adapters/{action}", data=json.dumps({"name": name}).encode(),
                                         headers={"Authorization": f"Bearer {key}"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60):
                stats.management += 1
        except urllib.error.HTTPError as exc:
            if not (action == "unload" and exc.code == 404):  # unloading a non-resident adapter is a fine 404
                stats.fail(f"{action} {name}: HTTP {exc.code} {exc.read()[:200]!r}")
        except Exception as exc:
            stats.fail(f"{action} {name}: {type(exc).__name__}: {exc}")


def scrape(url: str, metric: str) -> tuple[float, float]:
    """(sum, count) of a histogram, or (value, 1) of a counter summed over its labels, from /metrics."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(metric + "_sum"):
            total += float(line.split()[-1])
        elif line.startswith(metric + "_count"):
            count += float(line.split()[-1])
        elif line.startswith(metric) and not line.startswith(metric + "_"):
            total, count = total + float(line.split()[-1]), 1
    return total, count


def run(url: str, key: str, names: list[str], clients: int, seconds: float, max_tokens: int) -> tuple[Stats, float]:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key=key or "-", max_retries=0, timeout=120)
    stats, stop = Stats(), threading.Event()
    threads = [threading.Thread(target=client_loop, args=(client, names, stats, stop, i, max_tokens))
               for i in range(clients)]
    threads.append(threading.Thread(target=churn_loop, args=(url, key, names, stats, stop)))
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(180)
    return stats, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-tokens", type=int, default=16, help="each request asks for 1..this many tokens")
    parser.add_argument("--adapters", default=["6"], nargs="+",
                        help="how many adapters to build (or their names, with --url)")
    parser.add_argument("--max-resident", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--url", help="a running server (default: start one in-process on 127.0.0.1)")
    parser.add_argument("--api-key", default="load-test-key")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url, names, server = args.url.rstrip("/"), [str(a) for a in args.adapters], None
        else:
            from lorakit.serve import BackgroundServer, EngineSettings, ServeConfig, build

            model, tokenizer, names = build_fixture(Path(tmp), int(args.adapters[0]), args.hidden, args.layers)
            config = ServeConfig(max_resident=args.max_resident, api_key=args.api_key, max_tokens=64,
                                 engine=EngineSettings(max_batch_size=args.max_batch_size, batch_window_s=0.005,
                                                       max_queue=4 * args.clients))
            server = BackgroundServer(*build(model, tokenizer, Path(tmp) / "adapters", config)).__enter__()
            url = server.url
        try:
            stats, elapsed = run(url, args.api_key, names, args.clients, args.seconds, args.max_tokens)
            batch_sum, batches = scrape(url, "lorakit_batch_size")
            loads, _ = scrape(url, "lorakit_adapter_loads_total")
            swap_sum, swaps = scrape(url, "lorakit_adapter_load_seconds")
        finally:
            if server is not None:
                server.__exit__(None, None, None)
    lat = sorted(stats.latencies)
    p = lambda q: 1e3 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    print(f"command: python benchmarks/load_test.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{args.clients} clients, {len(names)} adapters ({args.max_resident} resident), {elapsed:.1f} s, "
          f"torch threads {torch.get_num_threads()}, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
          "after (a shared machine: wall-clock numbers)")
    print(f"requests ok: {len(lat)}, errors: {len(stats.errors)}, management calls ok: {stats.management}")
    print(f"throughput: {len(lat) / elapsed:.1f} requests/s, {stats.tokens / elapsed:.1f} generated tokens/s")
    if lat:
        print(f"latency: p50 {p(0.50):.0f} ms, p90 {p(0.90):.0f} ms, p99 {p(0.99):.0f} ms, max {1e3 * lat[-1]:.0f} "
              f"ms, mean {1e3 * statistics.mean(lat):.0f} ms")
    print(f"forward passes: {batches:.0f}, mean rows per forward {batch_sum / max(batches, 1):.2f}; adapter loads "
          f"(requests + churn): {loads:.0f}, mean load (read + swap) {1e3 * swap_sum / max(swaps, 1):.1f} ms")
    for error in stats.errors[:10]:
        print("error:", error)
    return 1 if stats.errors else 0


if __name__ == "__main__":
    sys.exit(main())
