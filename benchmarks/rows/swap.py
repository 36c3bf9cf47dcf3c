"""Adapter swap row: load an adapter from disk and make it the active one, over the time of one forward.

Each round loads the saved adapter under a fresh name (safetensors read, layers injected, weights copied) and
activates it; the adapter loaded in the round before is deleted untimed. The reference is one unmerged
forward of the same model on the inference batch. Before timing: the adapter loaded by lorakit and the same
files loaded by PEFT give the same outputs.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import torch

import lorakit
from benchmarks import models
from benchmarks.harness import Row, Settings, interleave, judge
from benchmarks.rows.common import assert_same_logits, describe, infer_setup

NAME = "adapter load + swap time / one forward"


def run(settings: Settings) -> list[Row]:
    from peft import PeftModel

    spec, batch, seq = infer_setup(settings)
    setup = describe(spec, torch.float32, batch, seq)
    base = models.build(spec)
    ids = models.token_ids(spec, batch, seq)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "adapter"
        lorakit.save_adapter(models.with_lorakit(base, seed=1), saved)
        lk = models.with_lorakit(base)  # the model serving: adapter 'default' active, the saved one swapped in
        pf = PeftModel.from_pretrained(models.build(spec), saved, adapter_name="default")
        lorakit.load_adapter(lk, saved, adapter_name="check")
        assert_same_logits(lk, pf, ids, "adapter loaded from the same files")
        lorakit.set_adapter(lk, "default")
        lorakit.delete_adapter(lk, "check")

        names = (f"swap{i}" for i in itertools.count())
        loaded: dict[str, str | None] = {"lorakit": None, "peft": None}

        def lk_swap() -> None:
            loaded["lorakit"] = next(names)
            lorakit.load_adapter(lk, saved, adapter_name=loaded["lorakit"])  # load + activate

        def pf_swap() -> None:
            loaded["peft"] = next(names)
            pf.load_adapter(saved, adapter_name=loaded["peft"])
            pf.set_adapter(loaded["peft"])

        def cleanup(contender: str) -> None:  # untimed: back to one resident adapter
            if contender == "lorakit" and loaded["lorakit"]:
                lorakit.set_adapter(lk, "default")
                lorakit.delete_adapter(lk, loaded["lorakit"])
                loaded["lorakit"] = None
            if contender == "peft" and loaded["peft"]:
                pf.set_adapter("default")
                pf.delete_adapter(loaded["peft"])
                loaded["peft"] = None

        samples = interleave(
            {"lorakit": lk_swap, "peft": pf_swap, "lk_forward": lambda: _forward(lk, ids),
             "pf_forward": lambda: _forward(pf, ids)},
            settings.rounds, settings.clock, before=cleanup,
        )
    lk_ratio, pf_ratio = samples.ratio("lorakit", "lk_forward"), samples.ratio("peft", "pf_forward")
    note = f"load + swap {1000 * samples.min('lorakit'):.1f} ms (PEFT {1000 * samples.min('peft'):.1f} ms)"
    return [Row(NAME, setup, lk_ratio, pf_ratio, "-", "<= 0.10", judge(lk_ratio, lambda v: v <= 0.10), unit="ratio",
                note=note)]


def _forward(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits
