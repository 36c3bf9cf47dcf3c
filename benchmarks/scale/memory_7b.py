"""Part 1 of SCALE.md: a 7B-class model on this machine. A random-weight Llama-2-7B-shaped checkpoint (bf16, 5 GB
shards, benchmarks/scale/checkpoint.py) is fine-tuned with QLoRA (nf4 + double quant, quantized while it loads,
shard by shard) and with LoRA on the bf16 base, both with gradient checkpointing, batch 1 x 512 tokens; then the
LoRA adapter is merged with `lorakit merge --low-memory` (shard by shard). Each in its own process.

    python -m benchmarks.scale.memory_7b [--quick] WORK     # prints the section's markdown
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.scale.checkpoint import SHARD_BYTES, build, parameter_count
from benchmarks.scale.probe import cached, last_json_line, run_child
from benchmarks.scale.section import Section, Target

GiB = 1024**3
MiB = 1024**2
QLORA_PAPER_7B_GB = 6.9  # the figure the issue quotes for a 7B QLoRA fine-tune with checkpointing


def plan(quick: bool) -> dict:
    if quick:
        return {"shape": "tiny", "steps": 2, "seq": 64, "rank": 16}
    return {"shape": "7b", "steps": 2, "seq": 512, "rank": 16}


def measure(work: Path, quick: bool, fresh: bool = False) -> dict:
    p = plan(quick)
    work.mkdir(parents=True, exist_ok=True)
    model = build(p["shape"], work / f"llama-{p['shape']}", SHARD_BYTES if not quick else 8 * MiB)
    results = {"plan": p, "params": parameter_count(p["shape"]),
               "shard_bytes": max(f.stat().st_size for f in model.glob("*.safetensors"))}
    for variant in ("qlora", "lora-bf16"):
        name = f"train-{p['shape']}-{variant}"
        results[variant] = cached(work, name, fresh, lambda v=variant, n=name: _train(work, model, v, p, n))
    before = work / f"train-{p['shape']}-qlora-glibc-default.json"  # measured before train/heap.py, kept by hand
    if before.is_file():
        results["qlora-glibc-default"] = json.loads(before.read_text())
    adapter = work / f"train-{p['shape']}-lora-bf16-adapter"
    results["merge"] = cached(work, f"merge-{p['shape']}", fresh, lambda: _merge(work, model, adapter, p))
    return results


def _train(work: Path, model: Path, variant: str, p: dict, name: str) -> dict:
    log = work / f"{name}.log"
    argv = ["-m", "benchmarks.scale.train_probe", str(model), "--variant", variant, "--steps", str(p["steps"]),
            "--seq", str(p["seq"]), "--rank", str(p["rank"]), "--save", str(work / f"{name}-adapter")]
    code, peak, wall = run_child(argv, log)
    if code != 0:
        raise RuntimeError(f"{name} failed (exit {code}); see {log}")
    return {**last_json_line(log), "process_peak_mib": peak, "wall_s": wall}


def _merge(work: Path, model: Path, adapter: Path, p: dict) -> dict:
    import shutil

    out = work / f"merged-{p['shape']}"
    shutil.rmtree(out, ignore_errors=True)
    log = work / f"merge-{p['shape']}.log"
    argv = ["-m", "lorakit.cli.main", "merge", str(model), str(adapter), str(out), "--dtype", "bfloat16",
            "--low-memory"]
    code, peak, wall = run_child(argv, log)
    if code != 0:
        raise RuntimeError(f"lorakit merge failed (exit {code}); see {log}")
    written = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    shutil.rmtree(out, ignore_errors=True)  # 13 GB: measured, not kept
    return {"peak_mib": peak, "wall_s": wall, "written_bytes": written, "log_tail": log.read_text()[-400:]}


def section(results: dict) -> Section:
    p, q, b, m = results["plan"], results["qlora"], results["lora-bf16"], results["merge"]
    billions = results["params"] / 1e9
    shard_gib = results["shard_bytes"] / GiB
    gib = lambda mib: mib / 1024  # noqa: E731
    rows = [
        "| variant | load s | load peak GiB | s / step | step peak GiB | save peak GiB | trainable | adapter MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    variants = [("QLoRA nf4 + double quant, bf16 compute", q), ("LoRA, bf16 base", b)]
    if "qlora-glibc-default" in results:
        variants.insert(1, ("QLoRA, glibc's default malloc (before `train/heap.py`)", results["qlora-glibc-default"]))
    for label, r in variants:
        steps = r["step_s"]
        rows.append(f"| {label} | {r['load_s']:.0f} | {gib(r['load_peak_mib']):.2f} | "
                    f"{sum(steps) / len(steps):.1f} ({', '.join(f'{s:.1f}' for s in steps)}) | "
                    f"{gib(r['step_peak_mib']):.2f} | {gib(r.get('save_peak_mib', 0)):.2f} | "
                    f"{r['trainable'] / 1e6:.1f}M | {r.get('adapter_mib', 0):.0f} |")
    full_mixed = results["params"] * 16 / GiB  # bf16 weights + grads, fp32 master + Adam m, v
    shape = "a Llama-2-7B-shaped" if p["shape"] == "7b" else f"a {p['shape']} Llama-shaped (quick mode)"
    body = f"""Model: {shape} checkpoint with random weights ({billions:.2f}B parameters, bf16, shards of
<= {shard_gib:.2f} GiB with an index, as a Hub checkpoint), built by `benchmarks/scale/checkpoint.py`.
LoRA r={p['rank']} on all linear layers, gradient checkpointing, AdamW, batch 1 x {p['seq']} tokens,
{p['steps']} optimizer steps. Each variant loads through `lorakit.hf.models.load_model` (what `lorakit train`
runs) in its own process; peak RSS per phase (getrusage; freed memory handed back and the peak counter reset
between phases).

{chr(10).join(rows)}

- QLoRA quantizes while it loads (`lorakit/hf/stream_load.py`): the bf16 model is never whole in memory; the
  load peak is the packed model plus one weight's temporaries. For comparison, the QLoRA paper's figure quoted
  in the issue: {QLORA_PAPER_7B_GB} GB for 7B with checkpointing.
- Full fine-tuning cannot fit: {billions:.2f}B x 16 bytes (bf16 weights and grads, fp32 master weights, Adam's
  two moments) = {full_mixed:.0f} GiB, against 24 GiB of RAM.
- `lorakit merge --low-memory` of the bf16 LoRA adapter into the bf16 checkpoint, shard by shard
  (`lorakit/merge_shards.py`): peak {gib(m['peak_mib']):.2f} GiB for {m['written_bytes'] / GiB:.1f} GiB written, in
  {m['wall_s']:.0f} s (largest shard {shard_gib:.2f} GiB)."""
    targets = [
        Target("QLoRA 7B step peak RSS <= 7 GiB", f"{gib(q['step_peak_mib']):.2f} GiB", gib(q["step_peak_mib"]) <= 7),
        Target("bf16 LoRA 7B step peak RSS <= 17 GiB", f"{gib(b['step_peak_mib']):.2f} GiB",
               gib(b["step_peak_mib"]) <= 17),
        Target("merge peak <= 2 shards",
               f"{gib(m['peak_mib']):.2f} GiB ({m['peak_mib'] * MiB / results['shard_bytes']:.2f} shards)",
               m["peak_mib"] * MiB <= 2 * results["shard_bytes"]),
    ]
    if p["shape"] != "7b":
        for target in targets:
            target.met, target.measured = None, f"quick mode ({p['shape']} model): {target.measured}"
    return Section("A 7B-class model on a 24 GiB, 2-core machine", body, targets)


def run(work: Path, quick: bool, fresh: bool = False) -> Section:
    return section(measure(work, quick, fresh))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    print(run(args.work, args.quick, args.fresh).markdown)


if __name__ == "__main__":
    main()
