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
    settings = Settings(quick=args.quick, rounds=args.rounds or (3 if args.quick else 10), clock=args.clock,
                        threads=args.threads)
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = Report(command=command.strip(), settings=settings, load_before=os.getloadavg())
    started, failed = time.perf_counter(), False
    for name in args.rows.split(","):
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        row_started = time.perf_counter()
        try:
            rows = importlib.import_module(f"benchmarks.rows.{name}").run(settings)
        except Exception as exc:  # one broken row must not hide the others; the run still fails
            traceback.print_exc()
            failed = True
            rows = [Row(name, "-", None, None, "-", "-", "FAILED", note=f"{type(exc).__name__}: {str(exc)[:300]}")]
        report.rows += rows
        print(f"[benchmarks] {name}: {time.perf_counter() - row_started:.0f} s", file=sys.stderr, flush=True)
    report.seconds = time.perf_counter() - started
    args.out.write_text(report.markdown())
    print(report.markdown())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
