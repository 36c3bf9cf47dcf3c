"""Memory of QLoRA vs LoRA vs full fine-tuning: bytes per quantized parameter, and peak RSS of a training step.

    python benchmarks/qlora_memory.py                 # the table in docs/qlora.md
    python benchmarks/qlora_memory.py --layers 4      # smaller / faster

Every variant runs in its own process (peak RSS is per process) on the same random Llama: every parameter is
drawn from a generator seeded by its name, so all variants hold identical weights. The model is created on the
meta device and materialized tensor by tensor; QLoRA quantizes each linear weight right after drawing it, so no
variant ever holds more than its own model. Peak RSS is read with getrusage(ru_maxrss) twice: over set-up (model
creation, quantization, adapters) and over the training steps alone (freed set-up memory is handed back with
malloc_trim, then the kernel's peak counter is reset through /proc/self/clear_refs before the first step), each
variant once with glibc's default malloc and once with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_), which
stops glibc from keeping QLoRA's freed per-layer dequantized weights resident. A step is AdamW on a causal-LM
loss, batch x seq tokens. Step times are wall clock on whatever machine runs this (default malloc).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zlib

VARIANTS = {  # name -> (quantization or None, LoRA or not, gradient checkpointing)
    "full fine-tuning": (None, False, False),
    "LoRA (fp32 base)": (None, True, False),
    "QLoRA (nf4 + double quant)": ("nf4", True, False),
    "QLoRA + grad. checkpointing": ("nf4", True, True),
    "LoRA + grad. checkpointing": (None, True, True),
}
MiB = 1024 * 1024
# glibc raises its mmap threshold after freeing a large block, after which freed blocks below it stay resident:
# QLoRA's per-layer dequantized weights (transient) then inflate RSS. A fixed threshold turns that off.
ALLOCATORS = {"glibc default": {}, "MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def release_free_memory() -> None:
    """Hand memory freed during set-up back to the OS (glibc keeps freed heap chunks resident otherwise; QLoRA
    frees every fp32 weight it quantizes), so the step's peak counts what the step holds, not set-up garbage."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak RSS counter (Linux >= 4.0)
        return True
    except OSError:
        return False


def build_model(args, quantization: str | None):
    import torch
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorakit.quantize import QuantConfig, quantize_linear

    config = LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64, vocab_size=args.vocab,
        max_position_embeddings=args.seq, tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    quant = QuantConfig(method=quantization) if quantization else None
    for path, module in list(model.named_modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            key = f"{path}.{name}"
            value = torch.empty(param.shape)
            if name == "weight" and param.dim() == 1:  # norms
                value.fill_(1.0)
            else:
                value.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
            setattr(module, name, nn.Parameter(value))
        if quant is not None and type(module) is nn.Linear and not path.endswith("lm_head"):
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, quantize_linear(module, quant))  # frees the fp32 weight
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config)  # its buffers, computed on the CPU
    return model


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def weight_bytes(model) -> int:
    """Bytes of every parameter and buffer, plus the quantization statistics of packed layers."""
    from lorakit.quantize import quantized_bytes, quantized_layers

    packed = {id(layer.weight) for _, layer in quantized_layers(model)}
    plain = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if id(t) not in packed)
    return plain + quantized_bytes(model)[0]


def child(args) -> dict:
    import bitsandbytes  # noqa: F401  every variant pays its import (~116 MiB: it loads torch's compiler stack)
    import torch

    import lorakit
    from lorakit.quantize import quantized_bytes

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    quantization, use_lora, checkpointing = VARIANTS[args.child]
    base_rss = current_rss_mib()
    model = build_model(args, quantization)
    if use_lora:
        config = lorakit.LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear")
        lorakit.add_adapter(model, config)
    if checkpointing:
        model.activation_checkpointing_enable()
    model.train()
    trainable, total = lorakit.count_parameters(model)
    nbytes, nparams = quantized_bytes(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    setup_rss = peak_rss_mib()
    release_free_memory()
    reset = reset_peak()
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {
        "variant": args.child, "trainable": trainable, "total": total, "import_rss_mib": base_rss,
        "weights_mib": weight_bytes(model) / MiB,
        "setup_peak_mib": setup_rss, "step_peak_mib": peak_rss_mib() if reset else None,
        "quantized_bytes": nbytes, "quantized_params": nparams, "step_s": min(times), "losses": losses,
    }


def bytes_per_parameter(args) -> list[tuple[str, float]]:
    """Bytes per quantized parameter (packed weight + every statistic) for each method, on one model's linears."""
    from lorakit.quantize import apply_quantization, QuantConfig, quantized_bytes  # noqa: I001

    small = argparse.Namespace(**{**vars(args), "layers": 1})
    rows = []
    for label, config in [
        ("nf4 + double quant", QuantConfig("nf4", double_quant=True)),
        ("nf4", QuantConfig("nf4", double_quant=False)),
        ("fp4 + double quant", QuantConfig("fp4", double_quant=True)),
        ("int8", QuantConfig("int8")),
    ]:
        model = build_model(small, None)
        apply_quantization(model, config)
        nbytes, nparams = quantized_bytes(model)
        rows.append((label, nbytes / nparams))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch

    print(f"torch {torch.__version__}, bitsandbytes {_bnb_version()}, {os.cpu_count()} CPUs; model: Llama hidden "
          f"{args.hidden}, intermediate {args.intermediate}, {args.layers} layers, vocab {args.vocab}; step: batch "
          f"{args.batch} x {args.seq} tokens, AdamW, LoRA r={args.r} on all linear layers\n")
    print("bytes per quantized parameter (packed weights + all quantization statistics):")
    for label, value in bytes_per_parameter(args):
        print(f"  {label:<20} {value:.4f}")
    results = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--child", variant, *_passthrough(args)]
        row = {}
        for allocator, env in ALLOCATORS.items():
            done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **env})
            row[allocator] = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(row)
    _print_table(results)


def _passthrough(args) -> list[str]:
    keys = ("hidden", "intermediate", "layers", "vocab", "batch", "seq", "r", "steps", "threads")
    return [item for key in keys for item in (f"--{key}", str(getattr(args, key)))]


def _bnb_version() -> str:
    from importlib.metadata import version

    return version("bitsandbytes")


def _print_table(results: list[dict]) -> None:
    default, fixed = ALLOCATORS
    full = next(r for r in results if r[default]["variant"] == "full fine-tuning")
    print(f"\nstep peak: peak RSS over the training steps, with glibc's default malloc and with {fixed}")
    print(f"{'variant':<30} {'trainable':>11} {'weights':>9} {'set-up peak':>12} {'step peak':>10} {'vs full':>8} "
          f"{'fixed mmap':>11} {'vs full':>8} {'step s':>7}")
    for row in results:
        cells = []
        for allocator in (default, fixed):
            peak, reference = row[allocator]["step_peak_mib"], full[allocator]["step_peak_mib"]
            cells += [f"{peak:.0f} MiB" if peak else "n/a", f"{peak / reference:.2f}x" if peak and reference else "-"]
        first = row[default]
        weights, setup = f"{first['weights_mib']:.0f} MiB", f"{first['setup_peak_mib']:.0f} MiB"
        print(f"{first['variant']:<30} {first['trainable']:>11,} {weights:>9} {setup:>12} {cells[0]:>10} {cells[1]:>8} "
              f"{cells[2]:>11} {cells[3]:>8} {first['step_s']:>7.2f}")
    print(f"\nall variants: {full[default]['total']:,} parameters. weights: parameters, buffers and quantization "
          f"statistics. RSS after imports (torch, transformers, bitsandbytes) ~{full[default]['import_rss_mib']:.0f} "
          "MiB, in every peak.")

if __name__ == "__main__":
    main()
