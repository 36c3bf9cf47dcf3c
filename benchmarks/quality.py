"""LoRA against full fine-tuning (and DoRA, QLoRA, AdaLoRA, a linear probe) on real models and data:
benchmarks/QUALITY.md, written by one command.

    python benchmarks/quality.py                    # full mode (sizes: benchmarks/quality_plan.py, Sizes)
    python benchmarks/quality.py --quick            # CI smoke test: tiny slices, 1 seed, under a few minutes
    python benchmarks/quality.py --steps 30 --val-rows 200 --smol-steps 20   # smaller, when time is short

Every run trains in a fresh process (benchmarks/quality_worker.py). Each finished run is kept as JSON in the
work folder (--work), so a rerun with the same settings reuses it; QUALITY.md is written once, at the end, in one
atomic replace.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/quality.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import run_in_subprocesses
from benchmarks.quality_data import chat_files, general_file, review_files
from benchmarks.quality_plan import METHOD_KEYS, METHODS, QUICK, Method, Sizes, minilm_overrides, smol_overrides
from benchmarks.quality_report import Results, markdown
from lorakit.assets import asset_path
from lorakit.io.atomic import replace_files

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "QUALITY.md"


def parse(argv: list[str]) -> argparse.Namespace:
    full = Sizes()
    p = argparse.ArgumentParser(prog="python benchmarks/quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI smoke test: tiny slices, 1 seed, no grid")
    p.add_argument("--seeds", type=int, help=f"seeds per MiniLM method (default {full.seeds}; quick 1)")
    p.add_argument("--steps", type=int, help=f"MiniLM optimizer steps per run (default {full.steps})")
    p.add_argument("--val-rows", type=int, help=f"validation rows (default {full.val_rows})")
    p.add_argument("--test-rows", type=int, help="test rows (default: all)")
    p.add_argument("--smol-steps", type=int, help=f"SmolLM2 steps (default {full.smol_steps})")
    p.add_argument("--smol-rows", type=int, help=f"SmolLM2 training rows (default {full.smol_train_rows})")
    p.add_argument("--smol-val-rows", type=int, help=f"SmolLM2 held-out rows (default {full.smol_val_rows})")
    p.add_argument("--general-rows", type=int, help=f"general-text paragraphs (default {full.general_rows})")
    p.add_argument("--no-grid", action="store_true",
                   help="skip the lr grid: each method runs its default lr (the demo's, chosen on validation)")
    p.add_argument("--methods", default=",".join(METHOD_KEYS), help="MiniLM methods to run (default: all)")
    p.add_argument("--no-smol", action="store_true", help="skip the SmolLM2 part")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the markdown file (default benchmarks/QUALITY.md)")
    p.add_argument("--work", type=Path, default=Path("/tmp/lorakit-quality"), help="runs and data files")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(METHOD_KEYS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_KEYS)}")
    for name in ("seeds", "steps", "val_rows", "test_rows", "smol_steps", "smol_rows", "smol_val_rows",
                 "general_rows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def sizes_of(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else Sizes()
    given = {"seeds": args.seeds, "steps": args.steps, "val_rows": args.val_rows, "test_rows": args.test_rows,
             "smol_steps": args.smol_steps, "smol_train_rows": args.smol_rows, "smol_val_rows": args.smol_val_rows,
             "general_rows": args.general_rows, "grid": False if args.no_grid else None}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


class Runner:
    """Runs the worker for an override list in its own process, or returns the kept result of the same list."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.fresh = self.reused = 0

    def __call__(self, spec: dict, label: str) -> dict:
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        kept = self.work / "results" / f"{key}.json"
        if kept.is_file():
            self.reused += 1
            return json.loads(kept.read_text())
        self.fresh += 1
        started = time.perf_counter()
        result = run_in_subprocesses("benchmarks.quality_worker", [[json.dumps(spec)]], timeout=3600)[0]
        print(f"  {label}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        replace_files(kept.parent, {kept.name: json.dumps(result).encode()})
        return result


def minilm_spec(method: Method, lr: float, seed: int, sizes: Sizes, files: dict, work: Path) -> dict:
    out_dir = work / "runs" / f"{method.key}-lr{lr:g}-seed{seed}"
    return {"base": "demo", "overrides": minilm_overrides(method, lr, seed, sizes, files, str(out_dir))}


def run_minilm(res: Results, keys: list[str], run: Runner, work: Path) -> None:
    sizes = res.sizes
    files = {k: str(v) for k, v in review_files(work, sizes.val_rows, sizes.test_rows).items()}
    methods = [m for m in METHODS if m.key in keys]
    for method in methods:
        by_lr: dict[float, dict] = {}
        if sizes.grid:  # seed 0 on each lr; the best validation accuracy wins (ties: the first)
            for lr in method.grid:
                by_lr[lr] = run(minilm_spec(method, lr, 0, sizes, files, work), f"{method.key} grid lr {lr:g}")
            res.grid[method.key] = [(lr, r["summary"]["final_eval"]["accuracy"]) for lr, r in by_lr.items()]
            chosen = max(method.grid, key=lambda lr: by_lr[lr]["summary"]["final_eval"]["accuracy"])
        else:
            chosen = method.default_lr
        res.chosen_lr[method.key] = chosen
        res.minilm[method.key] = [by_lr[chosen]] if chosen in by_lr else []
    for seed in range(sizes.seeds):  # seed by seed over all methods: an interrupted run leaves whole seeds kept
        for method in methods:
            if len(res.minilm[method.key]) == seed:
                spec = minilm_spec(method, res.chosen_lr[method.key], seed, sizes, files, work)
                res.minilm[method.key].append(run(spec, f"{method.key} seed {seed}"))


def run_smol(res: Results, run: Runner, work: Path) -> None:
    sizes = res.sizes
    files = {k: str(v) for k, v in chat_files(work, sizes.smol_train_rows, sizes.smol_val_rows).items()}
    general, rows = general_file(work, sizes.general_rows)
    res.smol_info["general_rows"] = rows
    model = str(asset_path("smollm2"))
    for method in ("lora", "full"):
        spec = {"base": None, "general_file": str(general),
                "overrides": smol_overrides(method, model, sizes, files, str(work / "runs" / f"smol-{method}"))}
        res.smol[method] = run(spec, f"smollm2 {method}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = args.work.resolve() / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/quality.py" + "".join(f" {shlex.quote(a)}" for a in argv)
    res = Results(command=command, quick=args.quick, sizes=sizes_of(args), load_before=os.getloadavg())
    started = time.perf_counter()
    run = Runner(work)
    run_minilm(res, args.methods.split(","), run, work)
    if not args.no_smol:
        run_smol(res, run, work)
    res.seconds = time.perf_counter() - started
    res.reused = (run.reused, run.fresh + run.reused)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_files(out.parent, {out.name: markdown(res).encode()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
