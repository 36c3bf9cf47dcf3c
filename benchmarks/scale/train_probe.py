"""One training variant in its own process (peak RSS is per process): load the base through lorakit's own
loader (hf/models.load_model, the path `lorakit train` takes), add LoRA, run optimizer steps on one
batch x seq sequence, save the adapter. Prints one JSON line: seconds and peak RSS of each phase.

    python -m benchmarks.scale.train_probe MODEL_DIR --variant qlora --steps 2 --rank 16 --save OUT

Peak RSS per phase: getrusage(ru_maxrss) after the phase; between phases memory freed by the last one is handed
back to the OS (malloc_trim) and the kernel's peak counter reset (/proc/self/clear_refs), as
benchmarks/qlora_memory.py does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.qlora_memory import peak_rss_mib, release_free_memory, reset_peak

VARIANTS = {  # name -> (quantization, base dtype)
    "qlora": ("nf4", "bfloat16"),
    "lora-bf16": (None, "bfloat16"),
}


def run(model_dir: Path, variant: str, steps: int, rank: int, seq: int, save: Path | None,
        checkpointing: bool = True) -> dict:
    import torch

    import lorakit
    from lorakit.hf.config import ModelConfig
    from lorakit.hf.models import load_model

    quantization, dtype = VARIANTS[variant]
    if quantization:
        from lorakit.train.heap import fix_mmap_threshold

        fix_mmap_threshold()  # what lorakit train does for a QLoRA run on CPU
    out: dict = {"variant": variant, "rank": rank, "seq": seq, "steps": steps}
    start = time.perf_counter()
    cfg = ModelConfig(path=str(model_dir), dtype=dtype, quantization=quantization, compute_dtype="bfloat16",
                      double_quant=True, gradient_checkpointing=checkpointing)
    model = load_model(cfg, model_dir)
    out["load_s"], out["load_peak_mib"] = time.perf_counter() - start, peak_rss_mib()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    trainable, total = lorakit.count_parameters(model)
    out["trainable"], out["total"] = trainable, total
    release_free_memory()
    out["peak_reset"] = reset_peak()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0))
    times, losses = [], []
    for _ in range(steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(loss))
    out["step_s"], out["losses"], out["step_peak_mib"] = times, losses, peak_rss_mib()
    if save is not None:
        release_free_memory()
        reset_peak()
        t = time.perf_counter()
        lorakit.save_adapter(model, save)
        if quantization:  # as a `lorakit train` run folder records it: merge then starts from the packed base
            import yaml

            section = {"task": "causal-lm", "quantization": quantization, "compute_dtype": "bfloat16",
                       "double_quant": True}
            (Path(save) / "train_config.yaml").write_text(yaml.safe_dump({"model": section}))
        out["save_s"], out["save_peak_mib"] = time.perf_counter() - t, peak_rss_mib()
        out["adapter_mib"] = sum(f.stat().st_size for f in Path(save).iterdir()) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--variant", choices=list(VARIANTS), default="qlora")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--save", type=Path, default=None)
    args = parser.parse_args()
    from lorakit.hf.quiet import quiet_transformers

    quiet_transformers()
    print(json.dumps(run(args.model_dir, args.variant, args.steps, args.rank, args.seq, args.save)), flush=True)


if __name__ == "__main__":
    main()
