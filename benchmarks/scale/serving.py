"""Many adapters served: `lorakit serve` with 8, 64 and 1,000 adapters on disk, 32 concurrent clients, greedy
requests spread over the adapters; against transformers + PEFT `generate(adapter_names=...)` batches.

    python -m benchmarks.scale.serving [--quick] OUT     # prints the markdown; writes OUT/serving_curve.json

Full mode serves SmolLM2-135M-Instruct (the `smollm2` asset); quick mode (CI, < 60 s) a tiny random Llama."""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.scale.section import Section, Target, met_word
from benchmarks.scale.serving_fixture import Job, load_base, make_jobs, write_adapters
from benchmarks.scale.serving_load import Result, Server, baseline


@dataclass(frozen=True)
class Plan:
    counts: tuple[int, ...] = (8, 64, 1000)
    clients: int = 32
    jobs: int = 64  # per lorakit run
    baseline_jobs: int = 32  # one batch of `clients` per generate call
    batch_clients: tuple[int, ...] = (1, 4, 16)  # plus `clients`, from the 8-adapter run
    batch_jobs: tuple[int, ...] = (6, 12, 32)
    alone: int = 8  # jobs per count re-sent alone for the text check
    max_tokens: tuple[int, int] = (16, 32)


FULL = Plan()
QUICK = Plan(jobs=32, baseline_jobs=32, batch_jobs=(4, 8, 16), alone=4, max_tokens=(8, 16))


def run(out: Path, quick: bool) -> Section:
    plan = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lorakit-serving-") as tmp:
        folder = Path(tmp)
        model, tokenizer, about = load_base(folder, quick)
        peft_base = copy.deepcopy(model)  # the baseline's own copy: the server wraps `model`'s layers in place
        names = write_adapters(model, folder / "adapters", max(plan.counts))
        jobs = {count: make_jobs(tokenizer, names[:count], plan.jobs, seed=count, max_tokens=plan.max_tokens)
                for count in plan.counts}
        runs: dict[int, Result] = {}
        alone: dict[int, list[str]] = {}
        batch: dict[int, Result] = {}
        # interleaved: the first lorakit run, then the baseline, then the other counts (the machine is shared)
        first, *rest = plan.counts
        runs[first], alone[first], base_texts = serve(model, tokenizer, folder, jobs[first], plan, base=True)
        peft = baseline(peft_base, tokenizer, folder / "adapters", jobs[first][:plan.baseline_jobs], plan.clients)
        for count in rest:
            runs[count], alone[count], _ = serve(model, tokenizer, folder, jobs[count], plan)
        with Server(model, tokenizer, folder / "adapters", max_resident=plan.clients, max_batch=plan.clients) as srv:
            srv.warm_up(warm_jobs(jobs[first]))
            for clients, n in zip(plan.batch_clients, plan.batch_jobs, strict=True):
                batch[clients] = srv.run(jobs[first][:n], clients)
        batch[plan.clients] = runs[first]
    seconds = time.perf_counter() - started
    curve = {"batch": [[c, round(r.tok_s, 2)] for c, r in sorted(batch.items())],
             "adapters": [[c, round(r.tok_s, 2)] for c, r in sorted(runs.items())]}
    curve_path = out / "serving_curve.json"
    curve_path.write_text(json.dumps(curve, indent=1) + "\n")
    return report(plan, quick, about, runs, alone, base_texts, peft, batch, curve_path,
                  (load_before, os.getloadavg()[0], seconds))


def serve(model, tokenizer, folder: Path, jobs: list[Job], plan: Plan, base: bool = False):
    """One lorakit run under load, then the first `plan.alone` jobs again one at a time (and, with `base`, their
    prompts on the base model, to show the adapters change the text)."""
    with Server(model, tokenizer, folder / "adapters", max_resident=plan.clients, max_batch=plan.clients) as srv:
        srv.warm_up(warm_jobs(jobs))
        loaded = srv.run(jobs, plan.clients)
        sample = jobs[:plan.alone]
        alone = srv.run(sample, 1).texts
        base_texts = srv.run([Job("base", j.prompt_ids, j.max_tokens) for j in sample], 1).texts if base else []
    return loaded, alone, base_texts


def row(count: int, contender: str, r: Result, rows: str, loads, equal: str) -> str:
    cells = [count, contender, f"{r.tok_s:.1f}", f"{r.tok_cpu_s:.1f}", f"{r.pct(0.5):.0f}", f"{r.pct(0.99):.0f}",
             len(r.latencies), r.tokens, rows, loads, equal]
    return "| " + " | ".join(map(str, cells)) + " |"


def warm_jobs(jobs: list[Job]) -> list[Job]:
    """One short request for each adapter kind (ad0000..ad0007: every rank and target set), so every slot bank
    exists before the timing starts."""
    return [Job(f"ad{i:04d}", jobs[0].prompt_ids, 2) for i in range(8)]


def report(plan: Plan, quick: bool, about: str, runs: dict[int, Result], alone: dict[int, list[str]],
           base_texts: list[str], peft: Result, batch: dict[int, Result],
           curve_path: Path, machine: tuple[float, float, float]) -> Section:
    first, last = min(runs), max(runs)
    lines = [
        f"Model: {about}; torch {torch.__version__}, {torch.get_num_threads()} torch threads, CPU. "
        f"{'QUICK mode (CI smoke run: tiny model, numbers mean little). ' if quick else ''}"
        f"Adapters: {max(runs)} random LoRA adapters written in PEFT's format (A ~ N(0, 1/in), B ~ N(0, 0.05^2): "
        "non-zero), kinds cycling r 8 / 16 on q_proj+v_proj and r 8 on every linear layer; the adapter folder "
        "holds all of them, a count N means the requests name ad0000..N-1.",
        f"Requests: {plan.jobs} per count, each for a random adapter of the N, one of 10 short prompts (sent as token "
        f"ids), max_tokens {plan.max_tokens[0]}-{plan.max_tokens[1]}, greedy (temperature 0). lorakit: `lorakit "
        f"serve`'s app in-process on 127.0.0.1 (max_resident {plan.clients}, max_batch_size {plan.clients}), "
        f"{plan.clients} client threads each with one request in flight (keep-alive HTTP, /v1/completions). "
        f"Baseline: the first {plan.baseline_jobs} requests of the {first}-adapter list through transformers + PEFT "
        f"(every adapter loaded into one PeftModel), in arrival order in batches of {plan.clients}, each one "
        "left-padded `generate(adapter_names=..., do_sample=False)` call; a request's latency is its batch's time.",
        "Throughput: generated tokens (up to EOS or max_tokens) / wall-clock seconds of the run (the targets), and "
        "/ this process's CPU seconds (server, clients and HTTP together: what other jobs on the machine change "
        "least). Latency: per "
        "request, client side, p50 / p99 (nearest rank). Text check: the first "
        f"{plan.alone} requests of each count sent again one at a time (nothing else in the batch) must give the "
        "same text as under load. Machine: 2 shared CPU cores; load average "
        f"{machine[0]:.1f} before, {machine[1]:.1f} after; {machine[2]:.0f} s in all. Wall-clock numbers: compare "
        "the ratios (contenders interleaved: lorakit 8, baseline, lorakit 64, lorakit 1000).",
        "",
        "| adapters | contender | generated tok/s | tok / CPU-s | p50 ms | p99 ms | requests | tokens | "
        "rows / forward | adapter loads | text equal alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    equal = {}
    for count, result in sorted(runs.items()):
        n = len(alone[count])
        equal[count] = sum(a == b for a, b in zip(alone[count], result.texts[:n], strict=True))
        lines.append(row(count, "lorakit", result, f"{result.rows_per_forward or 0:.1f}", result.loads,
                         f"{equal[count]}/{n}"))
    peft_equal = sum(a == b for a, b in zip(peft.texts, runs[first].texts, strict=False))
    lines.append(row(first, "transformers + PEFT", peft, f"{plan.clients} (padded)", "all up front",
                     f"{peft_equal}/{len(peft.texts)} equal lorakit's"))
    speedup = runs[first].tok_s / peft.tok_s
    scale = runs[last].tok_s / runs[first].tok_s
    cpu_speedup = runs[first].tok_cpu_s / peft.tok_cpu_s
    cpu_scale = runs[last].tok_cpu_s / runs[first].tok_cpu_s
    p50, p99 = (runs[last].pct(q) / runs[first].pct(q) for q in (0.5, 0.99))
    differ = sum(a != b for a, b in zip(alone[first], base_texts, strict=False))
    errors = sum(len(r.errors) for r in (*runs.values(), *batch.values()))
    lines += [
        "",
        f"Ratios: lorakit / baseline at {first} adapters **{speedup:.2f}x**; lorakit at {last} / at {first} adapters "
        f"**{scale:.2f}**; per CPU second {cpu_speedup:.2f}x and {cpu_scale:.2f}; latency at {last} / at {first}: "
        f"p50 {p50:.2f}x, p99 {p99:.2f}x. The adapters change the text: {differ} of {len(base_texts)} checked "
        f"requests differ from the base model's. HTTP errors: {errors}.",
        "",
        "Throughput against batch size (concurrent clients = most rows per forward; the "
        f"{first}-adapter requests) and against adapter count ({plan.clients} clients), also in "
        f"`{curve_path.name}`:",
        "",
        "| clients | generated tok/s | p50 ms | requests |", "|---|---|---|---|",
    ]
    lines += [f"| {c} | {r.tok_s:.1f} | {r.pct(0.5):.0f} | {len(r.latencies)} |" for c, r in sorted(batch.items())]
    lines += ["", "| adapters | generated tok/s |", "|---|---|"]
    lines += [f"| {c} | {r.tok_s:.1f} |" for c, r in sorted(runs.items())]
    checked = sum(len(t) for t in alone.values())
    targets = [
        Target(f"lorakit >= 3x the PEFT baseline's generated tokens/s at {first} adapters",
               f"{runs[first].tok_s:.1f} vs {peft.tok_s:.1f} tok/s = {speedup:.2f}x", speedup >= 3),
        Target(f"lorakit at {last} adapters within 20% of lorakit at {first}",
               f"{runs[last].tok_s:.1f} vs {runs[first].tok_s:.1f} tok/s = {scale:.2f}", scale >= 0.8),
        Target("generated text equal to each adapter served alone", f"{sum(equal.values())}/{checked} equal",
               sum(equal.values()) == checked and errors == 0),
    ]
    lines += ["", *[f"- {t.name}: {t.measured} — **{met_word(t.met)}**" for t in targets]]
    return Section("Serving many adapters", "\n".join(lines), targets, [curve_path])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(run(args.out, args.quick).markdown)


if __name__ == "__main__":
    main()
