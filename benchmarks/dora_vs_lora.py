"""DoRA training step vs LoRA, against PEFT's DoRA (use_dora=True): step time and peak memory, side by side.

    python benchmarks/dora_vs_lora.py                 # hidden 512, 4 layers, batch 4x128, fp32, CPU
    python benchmarks/dora_vs_lora.py --rounds 20 --targets q_proj,v_proj --clock cpu

Time: all variants live in one process on the same base weights and run interleaved (A, B, C, A, B, C, ...);
each round is one optimizer step (forward, backward, AdamW). Reported: min and median over the rounds and the
ratio to lorakit's LoRA. Memory: one fresh subprocess per variant runs a few steps and reports ru_maxrss (peak
RSS of the whole process) and its growth over the RSS just before the first step (activations, gradients and
optimizer state). Outputs of lorakit's and PEFT's DoRA are checked to agree before anything is timed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch

VARIANTS = ("lorakit-lora", "lorakit-dora", "peft-lora", "peft-dora")


def build(variant: str, args: argparse.Namespace):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4, num_hidden_layers=args.layers,
        num_attention_heads=8, num_key_value_heads=8, vocab_size=args.vocab, max_position_embeddings=args.seq,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    targets = args.targets.split(",")
    use_dora = variant.endswith("dora")
    import lorakit

    lorakit.add_adapter(model, lorakit.LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=targets,
                                                  use_dora=use_dora, init_lora_weights=False))
    if variant.startswith("peft"):  # same base and adapter weights, in PEFT's layers
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model, set_peft_model_state_dict

        adapter = lorakit.adapter_state_dict(model)
        model = lorakit.unload(model)
        model = get_peft_model(model, PeftLoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=targets,
                                                     use_dora=use_dora, init_lora_weights=False))
        result = set_peft_model_state_dict(model, adapter)
        assert not result.unexpected_keys, result.unexpected_keys
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4)


def batch(args: argparse.Namespace) -> torch.Tensor:
    return torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))


def step(model, optimizer, ids: torch.Tensor) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(variant: str, args: argparse.Namespace) -> None:
    model, optimizer = build(variant, args)
    ids = batch(args)
    gc.collect()
    build_peak = _status_mb("VmHWM")
    try:  # reset the high-water mark, so the peak below is the training steps' own (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = _status_mb("VmRSS")
    for _ in range(args.memory_steps):
        step(model, optimizer, ids)
    steps_peak = _status_mb("VmHWM") if reset else float("nan")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peak = max(build_peak, steps_peak) if reset else maxrss
    print(json.dumps({"variant": variant, "maxrss_mb": peak, "steps_peak_mb": steps_peak, "before_mb": before}))


def check_agreement(models: dict, ids: torch.Tensor) -> float:
    """lorakit's DoRA and PEFT's DoRA start from the same weights (same seed): their logits must agree."""
    with torch.no_grad():
        ours = models["lorakit-dora"][0](input_ids=ids).logits
        theirs = models["peft-dora"][0](input_ids=ids).logits
    diff = (ours - theirs).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"lorakit and PEFT DoRA disagree (max |diff| = {diff:.2e}); not timing")
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time, which leaves out waiting for the cores on a loaded machine")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset to run")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return

    import peft

    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    if "lorakit-lora" not in variants:
        raise SystemExit("--variants must include lorakit-lora (the reference of the ratios)")
    memory = {}
    for variant in variants:  # first, while this process is small (a child's ru_maxrss includes its parent's)
        cmd = [sys.executable, __file__, "--memory-child", variant, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        memory[variant] = json.loads(out.strip().splitlines()[-1])
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    ids = batch(args)
    models = {v: build(v, args) for v in variants}
    diff = check_agreement(models, ids) if {"lorakit-dora", "peft-dora"} <= set(models) else float("nan")
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(args.warmup + args.rounds):
        for variant in variants:
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            start = clock()
            step(*models[variant], ids)
            if i >= args.warmup:
                times[variant].append(clock() - start)
    del models

    print(f"torch {torch.__version__}, peft {peft.__version__}, threads {args.threads}; hidden {args.hidden}, "
          f"{args.layers} layers, batch {args.batch}x{args.seq}, r={args.r}, targets {args.targets}; fp32 CPU")
    print(f"lorakit vs PEFT DoRA logits: max |diff| {diff:.1e}; {args.rounds} interleaved rounds; {args.clock} clock; "
          f"load average before {load_before}, after {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    ref_min = min(times["lorakit-lora"])
    ref_med = statistics.median(times["lorakit-lora"])
    ref_mem = memory["lorakit-lora"]
    print(f"{'variant':14} {'min ms':>8} {'median ms':>10} {'min/LoRA':>9} {'med/LoRA':>9} "
          f"{'maxrss MB':>10} {'ratio':>6} {'steps MB':>9} {'ratio':>6}")
    ref_grown = ref_mem["steps_peak_mb"] - ref_mem["before_mb"]
    for variant in variants:
        t, mem = times[variant], memory[variant]
        grown = mem["steps_peak_mb"] - mem["before_mb"]
        print(f"{variant:14} {1e3 * min(t):8.1f} {1e3 * statistics.median(t):10.1f} {min(t) / ref_min:9.3f} "
              f"{statistics.median(t) / ref_med:9.3f} {mem['maxrss_mb']:10.0f} "
              f"{mem['maxrss_mb'] / ref_mem['maxrss_mb']:6.3f} {grown:9.0f} {grown / ref_grown:6.3f}")
    print("maxrss = peak RSS of the variant's own process (imports, model, training); steps MB = peak RSS during "
          "the training steps minus the RSS before them (activations, gradients, optimizer state)")


if __name__ == "__main__":
    main()
