"""Race lorakit against PEFT on every row and write benchmarks/RESULTS.md.

    python -m benchmarks.run                      # full: every row, 10 interleaved rounds (long on 2 cores)
    python -m benchmarks.run --quick              # CI smoke test: tiny model, 3 rounds; numbers mean nothing
    python -m benchmarks.run --rows forward,train --rounds 20 --clock cpu --threads 1

On a machine other jobs share, `--clock cpu --threads 1` times each call by this process's CPU time, which
leaves out the time spent waiting for a core. A row whose lorakit and PEFT outputs disagree fails (and the
run exits 1): a speedup that changes the result does not count.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.harness import Report, Row, Settings

ROWS = ("forward", "mixed", "train", "dora", "dropout", "swap", "memory")  # benchmarks/rows/<name>.py, in order
NOTES = [
    "Forward bound: LoRA's extra multiply-adds r(in+out) per token and adapted layer, over the whole model's "
    "(attention and the output head included), for the two low-rank products. With many tokens per call "
    "lorakit instead builds W + s B A for the call (out*in*r multiply-adds, W untouched; "
    "src/lorakit/kernels/linear.py), which is how it can land below that bound.",
    "Training speed-up bound: full fine-tuning runs every weight matmul 3 times (forward, input grad, weight "
    "grad); LoRA skips the frozen weights' gradients and the first block's input gradients, and adds its "
    "low-rank products 3 times. The throughput row's bound is PEFT's step over the floor's: the frozen model "
    "doing only the forward and backward work every LoRA step needs, with no adapter at all.",
    "Memory rows: one fresh process per variant, two training steps; training memory is the peak resident "
    "size during the steps above the size just before them (activations, gradients, optimizer state).",
    "Page faults (training throughput note): glibc returns freed multi-MB blocks to the kernel and maps fresh, "
    "zeroed pages for the next ones; which blocks it keeps depends on what ran before in the process, so the "
    "same step can cost ~10% more in one run than in another. The note prints each contender's median count "
    "per step. PEFT's step (the model's own loss) builds 4 logits-sized tensors (the logits, their "
    "log-softmax, both gradients), 32 MiB each on the full model, above glibc's largest mmap threshold: mapped "
    "fresh every step, 4 x 8193 faults. lorakit's chunked loss never builds them.",
    "met: 'yes' when both the min and the median meet the target, 'min only' when only the min does.",
]
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and 3 rounds (the CI smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per row (default 10; quick 3)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time, or this process's CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; quick: 1)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the table")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.rows.split(",")) - set(ROWS))
    if unknown:
        parser.error(f"--rows {','.join(unknown)}: unknown; rows are {','.join(ROWS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads or args.quick:  # tiny models gain nothing from threads, and lose a lot on a busy machine
        torch.set_num_threads(args.threads or 1)
    settings = Settings(quick=args.quick, rounds=args.rounds or (3 if args.quick else 10), clock=args.clock)
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = Report(command=command.strip(), settings=settings, load_before=os.getloadavg(), notes=list(NOTES))
    started, failed = time.perf_counter(), False
    for name in args.rows.split(","):
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        row_started = time.perf_counter()
        try:
            rows = importlib.import_module(f"benchmarks.rows.{name}").run(settings)
        except Exception as exc:  # one broken row must not hide the others; the run still fails
            traceback.print_exc()
            failed = True
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]  # one line: it goes in a table cell
            rows = [Row(name, "-", None, None, "-", "-", "FAILED", note=message)]
        report.rows += rows
        print(f"[benchmarks] {name}: {time.perf_counter() - row_started:.0f} s", file=sys.stderr, flush=True)
    report.seconds = time.perf_counter() - started
    args.out.write_text(report.markdown())
    print(report.markdown())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
