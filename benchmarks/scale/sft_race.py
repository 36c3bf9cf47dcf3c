"""SFT end to end: `lorakit train`'s trainer against TRL's SFTTrainer with a PEFT LoRA, on the same model, data,
hyperparameters and steps (benchmarks/SCALE.md, issue 21).

    python -m benchmarks.scale.sft_race [--quick] OUT      # prints the markdown section, writes OUT/sft_race.json

Set-up (prepare): SmolLM2-135M-Instruct (the GGUF asset, dequantized once and saved as a dense model both sides read)
and chat rows built from Rotten Tomatoes snippets of every length (the user asks for a verdict on a review, the
assistant answers). The initial adapter (r=16, alpha=32, all-linear, seeded) is made once and loaded by both
sides, so their first steps compute the same numbers. lorakit tokenizes the rows; TRL gets those very tokens (with
a completion mask: the loss is on the assistant's answer, on both sides), in the order lorakit's trainer takes
them, so the two loss curves can be compared step by step before anything is timed.

Contenders (sft_worker.VARIANTS), each in its own process (its peak RSS is its own), repetitions interleaved:
- lorakit: padding-free packing (blocks of max_seq_len tokens) and the LM head on answer tokens only (train/head.py);
- lorakit-unpacked: the same trainer on padded batches (the run whose losses are compared with TRL's);
- trl-default: SFTTrainer as users run it (padded batches; it computes per-step entropy and token accuracy);
- trl-lean / trl-packed: SFTTrainer tuned for a CPU: its per-step metrics off (a subclass: TRL has no switch), sdpa
  attention (its fastest on a CPU; flash attention needs a GPU), on padded batches / with packing="bfd" (which
  TRL makes padding-free: every block of a batch in one row). "TRL best" is the faster of the two in the run, and
  lorakit's figure in the targets is likewise the faster of its two settings.
Speed is real tokens (not padding) per second between the end of step `warm` and the end of the last step (the
steady state: loading, the first steps and saving are left out). Quick mode (CI) runs a tiny random Llama for a few
steps: it checks the machinery; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.scale.section import Section, Target, met_word

ROOT = Path(__file__).resolve().parents[2]
ORDER = ("lorakit", "trl-default", "trl-lean", "trl-packed", "lorakit-unpacked")  # one repetition, interleaved
LABELS = {"lorakit": "lorakit (packed, answer-only head)", "lorakit-unpacked": "lorakit (padded batches)",
          "trl-default": "TRL SFTTrainer defaults", "trl-lean": "TRL SFTTrainer, metrics off (padded batches)",
          "trl-packed": "TRL SFTTrainer, metrics off, bfd packing (padding-free)"}
LORAKIT_SETTINGS = ("lorakit", "lorakit-unpacked")  # lorakit's figure: whichever of these is faster in this run
TRL_TUNED = ("trl-lean", "trl-packed")  # TRL's best CPU settings: whichever of these is faster in this run
FULL = {"steps": 13, "warm": 3, "reps": 2, "rows": 512, "batch": 8, "seq": 128}
QUICK = {"steps": 3, "warm": 1, "reps": 1, "rows": 48, "batch": 4, "seq": 128}
LOSS_TOLERANCE = 2e-3  # relative: TRL logs losses rounded to 4 digits; the two runs compute the same numbers


def make_plan(quick: bool, **changes: int) -> dict[str, Any]:
    return {**(QUICK if quick else FULL), **changes, "quick": quick, "r": 16, "alpha": 32, "lr": 2e-4, "seed": 0,
            "threads": None}


# -- set-up ------------------------------------------------------------------------------------------------------------
def chat_rows(count: int, seed: int) -> list[dict]:
    """`count` chat rows from the Rotten Tomatoes train split, snippets of every length, seeded shuffle."""
    from lorakit.corpora import rotten_tomatoes_splits
    from lorakit.demo.chat_data import chat_row, read_split

    reviews = read_split(rotten_tomatoes_splits()["train"])
    random.Random(seed).shuffle(reviews)
    return [chat_row(r) for r in reviews[:count]]


def write_model(target: Path, quick: bool, rows: list[dict]) -> None:
    """The dense model and tokenizer both sides load: SmolLM2 from its GGUF asset, or (quick) a tiny random Llama."""
    if quick:
        from lorakit.hf.tiny import make_tiny_model

        make_tiny_model(target, "llama", [m["content"] for row in rows for m in row["messages"]], hidden_size=32)
        return
    import torch
    import transformers

    from lorakit.assets import asset_path
    from lorakit.hf.models import from_pretrained
    from lorakit.hf.tokenizer import load_tokenizer

    gguf = asset_path("smollm2")
    model = from_pretrained(transformers.AutoModelForCausalLM, gguf, dtype=torch.float32)
    model.save_pretrained(target)
    load_tokenizer(gguf).save_pretrained(target)


def write_init_adapter(work: Path, plan: dict) -> None:
    import torch
    import transformers

    import lorakit

    model = transformers.AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    torch.manual_seed(plan["seed"])
    config = lorakit.LoraConfig(r=plan["r"], lora_alpha=plan["alpha"], lora_dropout=0.0, target_modules="all-linear")
    lorakit.add_adapter(model, config)
    lorakit.save_adapter(model, work / "init")


def write_trl_data(work: Path, plan: dict) -> dict[str, float]:
    """lorakit's tokens for TRL: input_ids and a completion mask (1 on the trained tokens). trl_ordered.jsonl holds
    them in the order lorakit's trainer takes them (TRL reads it sequentially); trl_packed.jsonl holds them all."""
    from lorakit.hf.tokenizer import load_tokenizer
    from lorakit.train import state as S
    from lorakit.train.data import IGNORE, DataConfig, build_datasets

    data = DataConfig(train_file=str(work / "train.jsonl"), format="chat", max_seq_len=plan["seq"],
                      cache_tokenized=False)
    examples, _, _ = build_datasets(data, load_tokenizer(work / "model"))
    rows = [{"input_ids": e["input_ids"], "completion_mask": [int(t != IGNORE) for t in e["labels"]]} for e in examples]
    order = [i for s in range(plan["steps"]) for i in S.step_indices(s, len(rows), plan["batch"], plan["seed"])]
    for name, chosen in (("trl_ordered", [rows[i] for i in order]), ("trl_packed", rows)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")
    lengths = [len(e["input_ids"]) for e in examples]
    trained = [sum(t != IGNORE for t in e["labels"]) for e in examples]
    return {"examples": len(lengths), "min_len": min(lengths), "median_len": statistics.median(lengths),
            "max_len": max(lengths), "trained_share": sum(trained) / sum(lengths)}


def prepare(work: Path, plan: dict) -> dict[str, float]:
    rows = chat_rows(plan["rows"], plan["seed"])
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_model(work / "model", plan["quick"], rows)
    write_init_adapter(work, plan)
    (work / "plan.json").write_text(json.dumps(plan))
    return write_trl_data(work, plan)


# -- the race ------------------------------------------------------------------------------------------------------
def start(variants: list[str], work: Path, index: int) -> tuple[subprocess.Popen, Path]:
    result = work / f"result-{'+'.join(variants)}-{index}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "benchmarks.scale.sft_worker", ",".join(variants), str(work), str(result)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    return process, result


def finish(process: subprocess.Popen, result: Path) -> dict[str, dict]:
    _, stderr = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise RuntimeError(f"{result.stem} failed:\n{stderr[-3000:]}")
    return json.loads(result.read_text())


def race(work: Path, plan: dict) -> dict[str, list[dict]]:
    """Every contender in its own process, `reps` times, interleaved. Quick mode (CI's time limit: importing TRL
    alone takes ~15 s of CPU) runs one process per framework, both at once: its numbers mean nothing anyway."""
    runs: dict[str, list[dict]] = {v: [] for v in ORDER}
    for rep in range(plan["reps"]):
        if plan["quick"]:
            groups = [[v for v in ORDER if v.startswith(name)] for name in ("lorakit", "trl")]
            found: dict[str, dict] = {}
            for process, result in [start(group, work, rep) for group in groups]:
                found.update(finish(process, result))
        else:
            found = {}
            for variant in ORDER:
                found.update(finish(*start([variant], work, rep)))
        for variant in ORDER:
            runs[variant].append(found[variant])
    return runs


def steady(run: dict, plan: dict) -> dict[str, float]:
    """Seconds per step and real tokens per second from the end of step `warm` to the end of the last step."""
    warm, steps = plan["warm"], plan["steps"]
    seconds = run["stamps"][steps - 1] - run["stamps"][warm - 1]
    tokens = sum(run["tokens"][warm:steps])
    return {"s_per_step": seconds / (steps - warm), "tokens_per_s": tokens / seconds,
            "tokens_per_step": tokens / (steps - warm), "peak_rss_mib": run["peak_rss_mib"],
            "final_loss": run["losses"][-1]}


# -- the report -----------------------------------------------------------------------------------------------------
def loss_check(runs: dict[str, list[dict]], other: str = "trl-default") -> tuple[float, list[tuple[float, float]]]:
    """The largest relative gap between lorakit's padded run and TRL's padded run `other`, step by step (first
    repetition): the same batches in the same order from the same adapter."""
    ours, theirs = runs["lorakit-unpacked"][0]["losses"], runs[other][0]["losses"]
    pairs = list(zip(ours, theirs, strict=True))
    return max(abs(a - b) / max(abs(b), 1e-9) for a, b in pairs), pairs


def summarize(runs: dict[str, list[dict]], plan: dict) -> dict[str, dict[str, Any]]:
    out = {}
    for variant, found in runs.items():
        each = [steady(run, plan) for run in found]
        out[variant] = {key: statistics.median(e[key] for e in each) for key in each[0]}
        out[variant]["each"] = each
    return out


def build_section(plan: dict, data: dict, runs: dict, stats: dict, seconds: float) -> Section:
    # each side at its best: lorakit's faster setting against TRL's (packing is slower than padding for lorakit on
    # this CPU in some runs: see the table)
    mine = max(LORAKIT_SETTINGS, key=lambda v: stats[v]["tokens_per_s"])
    ours = stats[mine]
    gap, pairs = loss_check(runs)
    best = max(TRL_TUNED, key=lambda v: stats[v]["tokens_per_s"])
    speed = {v: ours["tokens_per_s"] / stats[v]["tokens_per_s"] for v in ("trl-default", best)}
    memory = {v: ours["peak_rss_mib"] / stats[v]["peak_rss_mib"] for v in ("trl-default", best)}
    quick = plan["quick"]
    base = QUICK if quick else FULL
    extra = "".join(f" --{n} {plan[n]}" for n in ("steps", "warm", "reps") if plan[n] != base[n])
    judged = None if quick else True  # a quick run's numbers (tiny model) judge nothing
    targets = [
        Target("lorakit SFT trained tokens/s >= 2.5x TRL SFTTrainer defaults",
               f"{speed['trl-default']:.2f}x (lorakit: {mine})",
               judged and speed["trl-default"] >= 2.5),
        Target("lorakit SFT trained tokens/s >= 1.5x TRL SFTTrainer at its best CPU settings",
               f"{speed[best]:.2f}x (best: {best})", judged and speed[best] >= 1.5),
        Target("lorakit SFT peak RSS <= 0.8x TRL's", f"{memory['trl-default']:.2f}x of TRL defaults, "
               f"{memory[best]:.2f}x of TRL best", judged and max(memory.values()) <= 0.8),
    ]
    model = "tiny random Llama (hidden 32, 2 layers; quick mode)" if quick else "SmolLM2-135M-Instruct (fp32, dense)"
    lines = [
        f"Model: {model}. Data: {data['examples']} chat rows from Rotten Tomatoes snippets, {data['min_len']}-"
        f"{data['max_len']} tokens (median {data['median_len']:.0f}); the loss is on the assistant's answer "
        f"({data['trained_share']:.0%} of the tokens). LoRA r={plan['r']}, alpha={plan['alpha']}, all-linear, "
        f"dropout 0, the same initial adapter on both sides; AdamW lr {plan['lr']}, constant schedule, clip 1.0; "
        f"batch {plan['batch']} x {plan['seq']} tokens (lorakit packed: {plan['batch'] // 2} blocks x "
        f"{2 * plan['seq']}; "
        f"TRL packed: {plan['batch']} bfd blocks of {plan['seq']} in one padding-free row); {plan['steps']} steps.",
        "",
        ("Quick mode: one process per framework, run side by side; " if quick else "Each contender runs in its own "
         f"process, in the order {', '.join(ORDER)}; {plan['reps']} repetition(s) of that order; medians below. ") +
        "Speed: real tokens (padding not counted) per second from "
        f"the end of step {plan['warm']} to the end of step {plan['steps']}. Peak memory: the process's peak RSS "
        "(its VmHWM: model, data, optimizer, activations).",
        "",
        "| variant | s/step | real tokens/step | real tokens/s | lorakit (faster setting) / this | peak RSS MiB | "
        "final loss (each run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in ORDER:
        s = stats[variant]
        finals = ", ".join(f"{e['final_loss']:.4f}" for e in s["each"])
        lines.append(f"| {LABELS[variant]} | {s['s_per_step']:.3f} | {s['tokens_per_step']:.0f} | "
                     f"{s['tokens_per_s']:.0f} | {ours['tokens_per_s'] / s['tokens_per_s']:.2f}x | "
                     f"{s['peak_rss_mib']:.0f} | {finals} |")
    lines += [
        "",
        f"Loss curves, lorakit (padded batches) vs TRL defaults on the same batches in the same order: largest "
        f"relative gap {gap:.1e} over {len(pairs)} steps ({'agree' if gap <= LOSS_TOLERANCE else 'DISAGREE'}; "
        f"tolerance {LOSS_TOLERANCE:g}, TRL logs 4 digits). Per step: "
        + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in pairs) + ". (The packed runs see other batches: their losses "
        f"are not step-comparable.) TRL with its metrics off, against the same lorakit run: largest relative gap "
        f"{loss_check(runs, 'trl-lean')[0]:.1e}.",
        "",
        "Targets: " + "; ".join(f"{t.name}: {t.measured} ({met_word(t.met)})" for t in targets) + ".",
        "",
        f"Command: `python -m benchmarks.scale.sft_race{' --quick' if quick else ''}{extra} OUT` ({seconds:.0f} s).",
    ]
    return Section("SFT end to end: lorakit train vs TRL SFTTrainer + PEFT", "\n".join(lines), targets)


def run(out: Path, quick: bool, **changes: int) -> Section:
    """The race (module doc); `changes` override the plan's steps / warm / reps (e.g. fewer on a loaded machine)."""
    plan = make_plan(quick, **changes)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sft-race-") as tmp:
        work = Path(tmp)
        data = prepare(work, plan)
        runs = race(work, plan)
    stats = summarize(runs, plan)
    section = build_section(plan, data, runs, stats, time.perf_counter() - started)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "sft_race.json"
    raw.write_text(json.dumps({"plan": plan, "data": data, "runs": runs, "stats": stats}, indent=1))
    section.files.append(raw)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale.sft_race", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for sft_race.json (the raw runs)")
    parser.add_argument("--quick", action="store_true", help="a tiny random model, a few steps (CI)")
    for name in ("steps", "warm", "reps"):
        parser.add_argument(f"--{name}", type=int, help=f"override the plan's {name} (full: {FULL[name]})")
    args = parser.parse_args(argv)
    if args.warm is not None and args.steps is not None and not 0 < args.warm < args.steps:
        parser.error(f"--warm {args.warm} --steps {args.steps}: expected 0 < warm < steps")
    changes = {n: getattr(args, n) for n in ("steps", "warm", "reps") if getattr(args, n) is not None}
    section = run(args.out, args.quick, **changes)
    print(f"## {section.title}\n\n{section.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
