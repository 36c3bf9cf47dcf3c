"""Mixed-adapter batch forward: 1, 2, 4, 8 distinct adapters in a batch of 8 rows, against the base forward and
against PEFT's `adapter_names=` mixed batch, in the same process, same weights, interleaved rounds.

Model: Llama h512 / ffn 1376 / 8 layers / vocab 8192, batch 8 x 128 tokens, r=16 adapters on all linear layers.
lorakit is timed three ways: entering `mixed_adapters` around each call with the rows of the previous call (a loop
over batches; the plan, i.e. the per-row weights stacked for these rows, is reused), entering it with rows it has
not seen (the plan built every time), and with the plan kept on the layers (generate's steps, a server's decode
steps). Also measured: one decode
step (batch 8, one token, 128 cached) and the adapter cache's swap-in of one adapter.

    python benchmarks/mixed_batch.py                    # full: 10 rounds (a few minutes on 2 cores)
    python benchmarks/mixed_batch.py --rounds 3 --quick # tiny model: a smoke test, numbers mean nothing
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/mixed_batch.py` from the repo

import lorakit
from benchmarks.harness import interleave, versions
from benchmarks.models import INFER_BATCH, INFER_SEQ, QUICK_BATCH, QUICK_SEQ, SMALL, TINY, build, forward_bound
from benchmarks.models import token_ids as make_ids
from lorakit.mixed import MixedPlan, model_row_weights

DISTINCT = (1, 2, 4, 8)
ADAPTERS = 8


def make_models(spec, rank: int, folder: Path):
    """(plain base, lorakit model with 8 adapters, PEFT model with the same 8 adapters)."""
    from peft import PeftModel

    base = build(spec)
    model = copy.deepcopy(base)
    for i in range(ADAPTERS):
        torch.manual_seed(10 + i)
        config = lorakit.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
        lorakit.add_adapter(model, config, f"a{i}", activate=False)
        lorakit.save_adapter(model, folder, f"a{i}")
    for _, layer in lorakit.inject.lora_layers(model):
        for name in layer.adapter_names:
            layer.lora_A[name].weight.requires_grad_(False)
            layer.lora_B[name].weight.requires_grad_(False)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), folder / "a0", adapter_name="a0")
    for i in range(1, ADAPTERS):
        peft_model.load_adapter(folder / f"a{i}", adapter_name=f"a{i}")
    return base, model, peft_model.eval()


def rows_for(k: int, batch: int) -> list[str]:
    return [f"a{i % k}" for i in range(batch)]  # interleaved: neighbouring rows use different adapters


def prefill(base, model, peft_model, ids, rounds: int, clock: str):
    """Per k: lorakit entering `mixed_adapters` for each call with the previous call's rows (plan reused), with new
    rows (plan built), with the plan kept on the layers (generate's / a server's steps); PEFT's adapter_names."""
    from lorakit.mixed import clear_plan_cache

    layers = [layer for _, layer in lorakit.inject.lora_layers(model)]
    fns, plans, warm = {"base": lambda: base(ids)}, {}, {}
    for k in DISTINCT:
        rows = rows_for(k, ids.shape[0])
        fns[f"lorakit k={k}"] = warm[f"lorakit k={k}"] = lambda rows=rows: _mixed(model, rows, ids)
        fns[f"lorakit k={k}, new rows"] = lambda rows=rows: _mixed(model, rows, ids)
        plans[f"lorakit k={k}, plan kept"] = MixedPlan([[(r, 1.0)] for r in rows], model_row_weights)
        fns[f"lorakit k={k}, plan kept"] = lambda: model(ids)
        fns[f"peft k={k}"] = lambda rows=rows: peft_model(ids, adapter_names=rows)
    fns["lorakit one adapter (plain forward)"] = lambda: model(ids)

    def before(name: str) -> None:  # untimed: the kept plan on the layers (or none, or the active adapter)
        plan = plans.get(name)
        for layer in layers:
            layer.mixed_rows = plan
        lorakit.set_adapter(model, "a0")
        clear_plan_cache(model)
        if name in warm:  # the previous call had the same rows (a loop over batches)
            warm[name]()

    try:
        return interleave(fns, rounds, clock, before=before)
    finally:
        before("")


def _mixed(model, rows, ids):
    with lorakit.mixed_adapters(model, rows):
        return model(ids)


def decode(base, model, peft_model, ids, rounds: int, clock: str):
    """One token for each of 8 rows after 128 cached ones (what a server mostly runs)."""
    from transformers import DynamicCache

    rows = rows_for(8, ids.shape[0])
    step = ids[:, :1]
    caches, plans = {}, {}
    for name, fn in (("base", base), ("lorakit k=8", model), ("peft k=8", peft_model)):
        cache = DynamicCache()
        if name == "lorakit k=8":
            plans[name] = lorakit.mixed_adapters(model, rows)
            plans[name].__enter__()
            fn(ids, past_key_values=cache, use_cache=True)
        elif name == "peft k=8":
            fn(ids, past_key_values=cache, use_cache=True, adapter_names=rows)
        else:
            fn(ids, past_key_values=cache, use_cache=True)
        caches[name] = cache
    seq = ids.shape[1]
    fns = {
        "base": lambda: base(step, past_key_values=caches["base"], use_cache=True),
        "lorakit k=8": lambda: model(step, past_key_values=caches["lorakit k=8"], use_cache=True),
        "peft k=8": lambda: peft_model(step, past_key_values=caches["peft k=8"], use_cache=True,
                                       adapter_names=rows),
    }

    def reset(name: str) -> None:  # back to the 128 prefilled tokens (crop takes how many to drop, negated)
        extra = caches[name].get_seq_length() - seq
        if extra > 0:
            caches[name].crop(-extra)

    try:
        return interleave(fns, rounds * 5, clock, before=reset)
    finally:
        plans["lorakit k=8"].__exit__(None, None, None)


def swap(base, folder: Path, ids, rounds: int) -> dict[str, float]:
    """The server's adapter cache: read one adapter from disk, and copy it into a slot (the swap)."""
    from lorakit.serve.cache import AdapterCache

    cache = AdapterCache(copy.deepcopy(base), folder, max_resident=2)
    reads, swaps = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        prepared = cache.read("a1")
        reads.append(time.perf_counter() - start)
        start = time.perf_counter()
        cache.install(prepared)
        swaps.append(time.perf_counter() - start)
    return {"read": min(reads), "swap": min(swaps[1:] or swaps), "first swap": swaps[0]}


def kernels(rounds: int, clock: str) -> list[str]:
    """One layer (512 -> 1376, r=16, 8 rows with 8 distinct adapters): the ways to compute the mixed update."""
    torch.manual_seed(0)
    n, d_in, d_out, r = 8, 512, 1376, 16
    weight = torch.randn(d_out, d_in) / 20
    a_bank, b_bank = torch.randn(n + 1, r, d_in) / 20, torch.randn(n + 1, d_out, r) / 20  # slot 0: no adapter
    slots = torch.arange(1, n + 1)
    a_rows, b_rows = a_bank[slots], b_bank[slots]  # stacked once per plan (lorakit)

    def base(x):
        return torch.nn.functional.linear(x, weight)

    def stacked(x):  # lorakit: rows' weights stacked once, two batched matmuls per forward
        return base(x).baddbmm_(torch.bmm(x, a_rows.transpose(1, 2)), b_rows.transpose(1, 2))

    def gathered(x):  # the same, gathering the rows' weights from the bank at every forward
        a, b = a_bank.index_select(0, slots), b_bank.index_select(0, slots)
        return base(x).baddbmm_(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))

    def grouped(x):  # PEFT's way: one sub-batch (index, two matmuls, scatter-add) per adapter
        y = base(x)
        for slot in slots.tolist():
            idx = (slots == slot).nonzero().flatten()
            y.index_add_(0, idx, (x.index_select(0, idx) @ a_bank[slot].T) @ b_bank[slot].T)
        return y

    def single(x):  # one adapter for all rows: the plain LoRA forward
        y = base(x)
        y.view(-1, d_out).addmm_(x.reshape(-1, d_in) @ a_bank[1].T, b_bank[1].T)
        return y

    lines = ["| tokens per row | base | one adapter (plain) | stacked once (lorakit) | gathered per forward | "
             "one group per adapter (PEFT-like) |", "|---|---|---|---|---|---|"]
    for tokens, repeat in ((128, 3), (1, 200)):
        x = torch.randn(n, tokens, d_in)
        fns = {name: (lambda f=f, x=x, repeat=repeat: [f(x) for _ in range(repeat)])
               for name, f in (("base", base), ("single", single), ("stacked", stacked), ("gathered", gathered),
                               ("grouped", grouped))}
        samples = interleave(fns, rounds, clock)
        ref = samples.min("base")
        cells = [f"{1e6 * ref / repeat:.0f} us"] + [f"{100 * (samples.min(k) / ref - 1):+.1f}%" for k in
                                                     ("single", "stacked", "gathered", "grouped")]
        lines.append(f"| {tokens} | " + " | ".join(cells) + " |")
    return lines


def table(samples, reference: str, names: list[str]) -> list[str]:
    lines = ["| contender | min ms | median ms | vs base (min) | vs base (median) |", "|---|---|---|---|---|"]
    ref_min, ref_med = samples.min(reference), samples.median(reference)
    for name in names:
        lo, med = samples.min(name), samples.median(name)
        lines.append(f"| {name} | {1e3 * lo:.1f} | {1e3 * med:.1f} | {100 * (lo / ref_min - 1):+.1f}% | "
                     f"{100 * (med / ref_med - 1):+.1f}% |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny model (a smoke test)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec, (batch, seq) = (TINY, (QUICK_BATCH * 4, QUICK_SEQ)) if args.quick else (SMALL, (INFER_BATCH, INFER_SEQ))
    load_before, started = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base, model, peft_model = make_models(spec, args.rank, folder)  # outside inference mode (see rows/mixed.py)
        ids = make_ids(spec, batch, seq)
        with torch.inference_mode():
            rows = rows_for(8, batch)
            mixed, reference = _mixed(model, rows, ids).logits, peft_model(ids, adapter_names=rows).logits
            torch.testing.assert_close(mixed, reference)  # same numbers before any timing
            pre = prefill(base, model, peft_model, ids, args.rounds, args.clock)
            dec = decode(base, model, peft_model, ids, args.rounds, args.clock)
            swaps = swap(base, folder, ids, max(3, args.rounds // 2))
    bound = forward_bound(spec, args.rank, seq)
    out = [f"command: python benchmarks/mixed_batch.py {' '.join(argv if argv is not None else sys.argv[1:])}",
           f"model: {spec.name}, batch {batch} x {seq}, r={args.rank} on all linear layers, {ADAPTERS} adapters; "
           f"clock {args.clock}; {args.rounds} interleaved rounds; torch threads {torch.get_num_threads()}",
           "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
           f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
           f"run {time.perf_counter() - started:.0f} s",
           f"physical bound of LoRA's extra FLOPs (prefill): +{100 * bound:.1f}%", "",
           "prefill (k = distinct adapters among the 8 rows):"]
    names = ["base"] + [f"lorakit k={k}{kept}" for kept in ("", ", new rows", ", plan kept") for k in DISTINCT]
    names += [f"peft k={k}" for k in DISTINCT]
    out += table(pre, "base", [*names, "lorakit one adapter (plain forward)"])
    out += ["", "decode step (8 rows, 1 token, 128 cached):"]
    out += table(dec, "base", ["base", "lorakit k=8", "peft k=8"])
    forward = pre.min("base")
    out += ["", f"adapter cache (r={args.rank}, all linear): read from disk {1e3 * swaps['read']:.1f} ms, swap into a "
                f"slot {1e3 * swaps['swap']:.2f} ms (first, allocating banks: {1e3 * swaps['first swap']:.1f} ms) "
                f"= {swaps['swap'] / forward:.4f} of one base prefill forward ({1e3 * forward:.0f} ms)"]
    out += ["", "one layer, the ways to compute the mixed update (min over rounds, vs the base matmul):"]
    out += kernels(args.rounds, args.clock)
    spread = [pre.median(f"lorakit k={k}") for k in DISTINCT]
    out.append(f"lorakit median across k: {1e3 * min(spread):.1f}-{1e3 * max(spread):.1f} ms "
               f"(spread {100 * (max(spread) / min(spread) - 1):.1f}%; {statistics.median(spread) * 1e3:.1f} ms)")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
