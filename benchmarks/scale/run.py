"""benchmarks/SCALE.md in one command: every part measured (or reused from the work folder's cache), the
targets summed up at the top, the command and the machine first.

    python -m benchmarks.scale                      # full: 7B-class runs, SmolLM2 races; writes benchmarks/SCALE.md
    python -m benchmarks.scale --quick --out DIR    # small models, ~minutes: what CI runs (tests/benchmarks/)
    python -m benchmarks.scale --parts memory,cost  # some parts only (the others: "not run")
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.scale.section import Section, Target, met_word

PARTS = ("memory", "sft", "serving", "cost")
ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = next((int(line.split()[1]) / 1024**2 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0.0) if Path("/proc/meminfo").exists() else 0.0
    versions = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    for name in ("peft", "trl", "bitsandbytes"):
        with contextlib.suppress(ImportError):
            versions.append(f"{name} {__import__(name).__version__}")
    return (f"{cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), {mem:.0f} GiB RAM, no GPU; "
            f"Python {platform.python_version()}; {', '.join(versions)}")


def cached_part(name: str, work: Path, out: Path, quick: bool, fresh: bool, memory_results: dict) -> Section:
    """A part whose own runs are not cached (the races) is stored whole once it succeeded: a later report reuses
    it unless --fresh. The memory and cost parts cache each measurement themselves."""
    path = work / f"section-{name}{'-quick' if quick else ''}.json"
    if name in ("sft", "serving") and path.is_file() and not fresh:
        raw = json.loads(path.read_text())
        return Section(raw["title"], raw["markdown"], [Target(**t) for t in raw["targets"]],
                       [Path(f) for f in raw["files"]])
    section = run_part(name, work, out, quick, fresh, memory_results)
    if name in ("sft", "serving"):
        path.write_text(json.dumps({"title": section.title, "markdown": section.markdown,
                                    "targets": [vars(t) for t in section.targets],
                                    "files": [str(f) for f in section.files]}, indent=2))
    return section


def run_part(name: str, work: Path, out: Path, quick: bool, fresh: bool, memory_results: dict) -> Section:
    if name == "memory":
        from benchmarks.scale import memory_7b

        results = memory_7b.measure(work, quick, fresh)
        memory_results.update(results)
        return memory_7b.section(results)
    if name == "sft":
        from benchmarks.scale import sft_race

        return sft_race.run(out, quick)
    if name == "serving":
        from benchmarks.scale import serving

        return serving.run(out, quick)
    from benchmarks.scale import cost

    # part 1's bf16 LoRA run is the same step as the cost curve's point of its shape (r=16, same batch)
    plan = memory_results.get("plan")
    known = {plan["shape"]: memory_results["lora-bf16"]} if plan else None
    return cost.section(cost.measure(work, quick, fresh, known=known), out, out / "serving_curve.json")


def render(sections: list[Section], command: str, took: float, quick: bool) -> str:
    lines = [
        "# lorakit at scale" + (" (quick mode: small models, not the targets' scale)" if quick else ""),
        "",
        f"Produced by `{command}` on {datetime.date.today().isoformat()} in {took / 60:.0f} min.",
        "",
        f"Machine: {machine()}.",
        "",
        "Measurements are reused from the work folder's cache when present (`--fresh` remeasures); timings on this",
        "shared machine vary by 5-15% run to run, so every speed claim below is a ratio measured in one process",
        "or interleaved runs.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for section in sections:
        for target in section.targets:
            lines.append(f"| {target.name} | {target.measured} | {met_word(target.met)} |")
    for number, section in enumerate(sections, 1):
        lines += ["", f"## {number}. {section.title}", "", section.markdown.strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, a few minutes (CI)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for SCALE.md and its PNGs (default: benchmarks/, or a temp folder with --quick)")
    parser.add_argument("--work", type=Path, default=None,
                        help="checkpoints, logs and cached measurements (default: ~/.cache/lorakit/scale)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--fresh", action="store_true", help="remeasure instead of reusing cached results")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    out = args.out or (Path(tempfile.mkdtemp(prefix="scale-quick-")) if args.quick else ROOT / "benchmarks")
    work = args.work or (out / "work" if args.quick else Path.home() / ".cache" / "lorakit" / "scale")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.scale " + shlex.join(sys.argv[1:] if argv is None else argv)
    start, sections, failed = time.perf_counter(), [], []
    memory_results: dict = {}
    for name in PARTS:
        if name not in parts:
            continue
        print(f"scale: {name} ...", flush=True)
        try:
            section = cached_part(name, work, out, args.quick, args.fresh, memory_results)
            if args.quick:  # small models: the numbers show the pipeline works, they judge nothing
                for target in section.targets:
                    if not target.measured.startswith("quick mode"):
                        target.measured = f"quick mode: {target.measured}"
                    target.met = None
            sections.append(section)
        except Exception as exc:  # one failed part must not lose the others' measurements
            failed.append(name)
            print(traceback.format_exc(), file=sys.stderr)
            sections.append(Section(f"{name}: FAILED", f"`{type(exc).__name__}: {exc}`",
                                    [Target(f"part {name!r} ran", "failed", False)]))
    report = out / "SCALE.md"
    report.write_text(render(sections, command.strip(), time.perf_counter() - start, args.quick))
    print(f"scale: wrote {report}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
