"""Interleaved timing, min/median statistics, peak memory from a subprocess, and the RESULTS.md writer.

Timings on shared machines are noisy, so every comparison runs its contenders in one process, interleaved
(A B C, B C A, C A B, ...: the order rotates each round so no one always runs first after a cold cache), and
reports the ratio of the minima and the ratio of the medians. With `clock="cpu"` each call is timed by the
process's CPU time instead of the wall clock: on a loaded machine it leaves out the time the process waits
for a core (with one thread it is the wall time of an idle machine).
Each call's minor page faults are counted too: a step that gets fresh pages from the kernel (glibc returns
freed multi-MB blocks to it, and which blocks depends on what ran before) pays for zeroing them, and that,
not the LoRA math, is what often separates two runs of the same step.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK_WORDS = {"wall": "wall time", "cpu": "this process's CPU time (leaves out waiting for a core)"}
MODE_WORDS = {True: "quick (CI smoke test: tiny model, few rounds; the numbers mean nothing)", False: "full"}


@dataclass
class Settings:
    """What every row reads: how many rounds, which clock, quick (CI) or full."""

    quick: bool = False
    rounds: int = 10
    clock: str = "wall"


@dataclass
class Samples:
    """Seconds per call, and minor page faults per call, per contender, in the order they ran."""

    times: dict[str, list[float]]
    faults: dict[str, list[int]]

    def min(self, name: str) -> float:
        return min(self.times[name])

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, num: str, den: str) -> tuple[float, float]:
        """(ratio of minima, ratio of medians) of two contenders' times."""
        return self.min(num) / self.min(den), self.median(num) / self.median(den)

    def speedup(self, slow: str, fast: str) -> tuple[float, float]:
        """How many times faster `fast` is than `slow` (a throughput ratio), min and median."""
        return self.ratio(slow, fast)

    def median_faults(self, name: str) -> int:
        """Median minor page faults per call (fresh pages the kernel had to zero and map in)."""
        return int(statistics.median(self.faults[name]))


def interleave(
    fns: dict[str, Callable[[], object]], rounds: int, clock: str = "wall", warmup: int = 1,
    before: Callable[[str], None] | None = None,
) -> Samples:
    """Call each function once per round, rotating the order; `before(name)` runs untimed before each call."""
    now = CLOCKS[clock]
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            if before is not None:
                before(name)
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if before is not None:
                before(name)
            faulted, start = minor_faults(), now()
            fns[name]()
            times[name].append(now() - start)
            faults[name].append(minor_faults() - faulted)
    return Samples(times, faults)


def minor_faults() -> int:
    """This process's minor page faults so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# -- rows of the results table ----------------------------------------------------------------------------
@dataclass
class Row:
    """One line of RESULTS.md. Values are (min, median) pairs; `unit` says how they print."""

    name: str
    setup: str  # model, dtype, batch
    lorakit: tuple[float, float] | None
    peft: tuple[float, float] | None
    bound: str
    target: str
    met: str  # "yes" (min and median), "min only", "no", "pending", "-" (no target)
    unit: str = "overhead"  # "overhead": ratio printed as +x.x%; "ratio": x.xxx; "single": one value
    note: str = ""

    def cells(self) -> list[str]:
        return [self.name, self.setup, fmt(self.lorakit, self.unit), fmt(self.peft, self.unit), self.bound,
                self.target, self.met, self.note]


def judge(pair: tuple[float, float] | None, ok: Callable[[float], bool]) -> str:
    """Whether a (min, median) pair meets a target: on both, on the minimum only, or not."""
    if pair is None:
        return "pending"
    if ok(pair[0]) and ok(pair[1]):
        return "yes"
    return "min only" if ok(pair[0]) else "no"


def fmt(pair: tuple[float, float] | None, unit: str) -> str:
    if pair is None:
        return "-"
    if unit == "overhead":
        return " / ".join(f"{100 * (v - 1):+.1f}%" for v in pair)
    if unit == "single":  # one measurement (peak memory), not min / median
        return f"{pair[0]:.3f}"
    return " / ".join(f"{v:.3f}" for v in pair)


def pending(name: str, setup: str, bound: str, target: str, why: str) -> Row:
    return Row(name, setup, None, None, bound, target, "pending", note=why)


# -- peak memory: one process per variant ------------------------------------------------------------------
class PeakMemory:
    """Peak resident memory of this process from a starting point on (Linux: VmHWM, reset via clear_refs)."""

    def __init__(self) -> None:
        self.resettable = _reset_peak()
        self.start_mb = _status_mb("VmRSS")

    def peak_mb(self) -> float:
        if self.resettable:
            return _status_mb("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # since the process started: an upper bound


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _status_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024  # kB
    return 0.0


def run_in_subprocesses(module: str, arg_lists: list[list[str]], timeout: float = 1800) -> list[dict]:
    """Run `python -m module args...` once per argument list, in fresh interpreters side by side; each prints
    one JSON object as its last line."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=root) for args in arg_lists]
    out = []
    for args, proc in zip(arg_lists, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{module} {' '.join(args)} failed:\n{stderr[-2000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


# -- the machine and the report ----------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); without it bf16 timings mean nothing."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def versions() -> dict[str, str]:
    import transformers

    import lorakit

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "lorakit": lorakit.__version__}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:  # pragma: no cover - peft is a test dependency
        out["peft"] = "not installed"
    return out


@dataclass
class Report:
    command: str
    settings: Settings
    rows: list[Row] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        v = versions()
        load_after = os.getloadavg()
        lines = [
            "# lorakit vs PEFT: benchmark results",
            "",
            "Written by the harness; do not edit by hand. Every ratio is `min / median` over "
            f"{self.settings.rounds} interleaved rounds (lorakit and PEFT in the same process, same weights, "
            "outputs checked equal first). `+x%` is the time overhead over the row's reference; plain numbers "
            "are ratios (higher is better for throughput and speed-up rows, lower for time and memory rows).",
            "",
            f"- command: `{self.command}`",
            f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"bf16 {'supported' if bf16_supported() else 'not supported'}",
            f"- load average (1, 5, 15 min): before {fmt_load(self.load_before)}, after {fmt_load(load_after)}",
            f"- clock: {CLOCK_WORDS[self.settings.clock]}; mode: {MODE_WORDS[self.settings.quick]}",
            "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- run time: {self.seconds:.0f} s",
            "",
            "| row | setup | lorakit | PEFT | bound | target | met | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |" for row in self.rows]
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        path.write_text(self.markdown())


def fmt_load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)
