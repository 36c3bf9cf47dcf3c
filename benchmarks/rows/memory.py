"""Peak training memory, one fresh process per variant (a process's peak RSS never goes back down).

As a worker, `python -m benchmarks.rows.memory VARIANT [--quick]` builds one model, takes two training steps
and prints {"before_mb", "peak_mb", "training_mb"} as JSON: training_mb is the peak during the steps above the
resident size just before them (activations, gradients, optimizer state), the part a LoRA library decides.
As a row: LoRA training memory, lorakit / PEFT, with dropout off and at 0.05, each library's step with the loss
its users run (lorakit's from `lorakit train`, lorakit.train.loss; PEFT's the model's own, as the HF Trainer does).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

from benchmarks.harness import PeakMemory, Row, Settings, run_in_subprocesses

VARIANTS = {  # name -> (library, lora settings)
    "lorakit-lora": ("lorakit", {}),
    "peft-lora": ("peft", {}),
    "lorakit-lora-dropout": ("lorakit", {"dropout": 0.05}),
    "peft-lora-dropout": ("peft", {"dropout": 0.05}),
    "lorakit-dora": ("lorakit", {"use_dora": True}),
    "peft-dora": ("peft", {"use_dora": True}),
}


def measure(variants: list[str], quick: bool) -> list[dict]:
    """Peak memory of each variant, each in its own fresh interpreter (run side by side)."""
    return run_in_subprocesses("benchmarks.rows.memory", [[v, *(["--quick"] if quick else [])] for v in variants])


def training_ratio(num: str, den: str, quick: bool) -> tuple[tuple[float, float], str]:
    a, b = measure([num, den], quick)
    ratio = a["training_mb"] / b["training_mb"]
    note = (f"training memory {a['training_mb']:.0f} / {b['training_mb']:.0f} MiB "
            f"(process peak {a['peak_mb']:.0f} / {b['peak_mb']:.0f} MiB)")
    return (ratio, ratio), note


def run(settings: Settings) -> list[Row]:
    from benchmarks.rows.common import describe, train_setup

    spec, batch, seq = train_setup(settings)
    import torch

    setup = describe(spec, torch.float32, batch, seq) + ", one process each"
    rows = []
    pairs = [("lorakit-lora-dropout", "peft-lora-dropout", "dropout 0.05")]
    if not settings.quick:
        pairs.insert(0, ("lorakit-lora", "peft-lora", "dropout 0"))
    for lk, pf, what in pairs:
        ratio, note = training_ratio(lk, pf, settings.quick)
        rows.append(Row(f"LoRA training peak memory, lorakit / PEFT ({what})", setup, ratio, None, "-", "<= 1.00",
                        "yes" if ratio[0] <= 1.0 else "no", unit="single", note=note))
    return rows


# -- the worker ----------------------------------------------------------------------------------------------
def _worker(variant: str, quick: bool) -> dict:
    import torch

    from benchmarks import models
    from benchmarks.rows.common import own_loss, train_setup, train_step

    library, extra = VARIANTS[variant]
    spec, batch, seq = train_setup(Settings(quick=quick))
    model = models.build(spec)
    settings = models.lora_settings(**extra)
    if library == "lorakit":
        import lorakit

        lorakit.add_adapter(model, lorakit.LoraConfig(**settings))
    else:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**settings))
    ids = models.token_ids(spec, batch, seq)
    step = train_step(model, ids, loss=own_loss(library))
    gc.collect()
    memory = PeakMemory()  # from here on
    torch.manual_seed(0)
    for _ in range(2):
        step()
    peak = memory.peak_mb()
    return {"variant": variant, "before_mb": memory.start_mb, "peak_mb": peak, "training_mb": peak - memory.start_mb,
            "exact_peak": memory.resettable}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(_worker(args.variant, args.quick)))
    sys.stdout.flush()
