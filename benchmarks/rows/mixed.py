"""Mixed-adapter batch rows: a batch of 8 rows with k = 1, 2, 4, 8 distinct adapters, over the base forward.

The mixed forward (src/lorakit/mixed.py) and its benchmark (benchmarks/mixed_batch.py) belong to the serving
work. This row runs that benchmark if it is there: `mixed_batch.rows(settings)` if the module defines it,
otherwise its `make_models` / `prefill` (checking lorakit's mixed batch equals PEFT's `adapter_names` first).
Without it the rows read "pending".
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

import torch

from benchmarks import models
from benchmarks.harness import Row, Settings, judge, pending
from benchmarks.rows.common import describe

DISTINCT = (1, 2, 4, 8)


def name(k: int) -> str:
    return f"mixed batch of 8 rows, k={k} distinct adapters / base forward"


def run(settings: Settings) -> list[Row]:
    spec, batch, seq = (models.TINY, 8, models.QUICK_SEQ) if settings.quick else (
        models.SMALL, models.INFER_BATCH, models.INFER_SEQ)
    setup = describe(spec, torch.float32, batch, seq)
    try:
        mixed_batch = importlib.import_module("benchmarks.mixed_batch")
    except ImportError as exc:
        return [pending(name(k), setup, "-", "<= +10%, flat in k", f"benchmarks/mixed_batch.py: {exc}")
                for k in DISTINCT]
    if hasattr(mixed_batch, "rows"):
        return mixed_batch.rows(settings)
    return _from_prefill(mixed_batch, settings, spec, batch, seq, setup)


def _from_prefill(mixed_batch, settings: Settings, spec, batch: int, seq: int, setup: str) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        # built outside inference mode, as a user loads a model: inference tensors have no version counter, so
        # mixed_adapters could not tell whether a kept plan is still current and would never reuse one
        base, model, peft_model = mixed_batch.make_models(spec, 16, Path(tmp))
        ids = models.token_ids(spec, batch, seq)
        with torch.inference_mode():
            for k in DISTINCT:  # same numbers before any timing
                rows = mixed_batch.rows_for(k, batch)
                torch.testing.assert_close(mixed_batch._mixed(model, rows, ids).logits,
                                           peft_model(ids, adapter_names=rows).logits)
            samples = mixed_batch.prefill(base, model, peft_model, ids, settings.rounds, settings.clock)
    bound = models.forward_bound(spec, 16, seq)
    out = []
    for k in DISTINCT:
        lk, pf = samples.ratio(f"lorakit k={k}", "base"), samples.ratio(f"peft k={k}", "base")
        kept = samples.ratio(f"lorakit k={k}, plan kept", "base")
        new = samples.ratio(f"lorakit k={k}, new rows", "base")
        out.append(Row(name(k), setup, lk, pf, f"+{100 * bound:.1f}% (FLOPs)", "<= +10%, flat in k",
                       judge(lk, lambda v: v <= 1.10),
                       note=f"lorakit: mixed_adapters entered per call, rows as in the previous call (plan reused); "
                            f"rows never seen before (plan built in the call): {100 * (new[0] - 1):+.1f}% min / "
                            f"{100 * (new[1] - 1):+.1f}% median; plan kept on the layers: {100 * (kept[0] - 1):+.1f}%"))
    return out
