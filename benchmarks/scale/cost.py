"""Part 4 of SCALE.md: how cost grows. Training step time and peak RSS against model size (Llama shapes of 135M,
1.1B, 3B and 7B parameters, random bf16 weights) and against LoRA rank (4..256, on the 1.1B shape), each point a
LoRA step on the bf16 base with gradient checkpointing, batch 1 x 512, in its own process; serving throughput
against batch size and adapter count comes from the serving part (serving_curve.json). One PNG per curve.

    python -m benchmarks.scale.cost [--quick] WORK OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from benchmarks.scale.checkpoint import build, parameter_count
from benchmarks.scale.probe import cached, last_json_line, run_child
from benchmarks.scale.section import Section

SIZES = ("135m", "1b", "3b", "7b")
RANKS = (4, 16, 64, 256)
RANK_SHAPE = "1b"


def plan(quick: bool) -> dict:
    if quick:
        return {"sizes": ("tiny",), "ranks": (4, 16, 64), "rank_shape": "tiny", "seq": 64, "steps": 2}
    return {"sizes": SIZES, "ranks": RANKS, "rank_shape": RANK_SHAPE, "seq": 512, "steps": 2}


def step_point(work: Path, shape: str, rank: int, p: dict, fresh: bool) -> dict:
    name = f"cost-{shape}-r{rank}-s{p['seq']}"

    def measure() -> dict:
        model = build(shape, work / f"llama-{shape}")
        steps = p["steps"] if shape != "7b" else 2  # a 7B step is ~1 min here
        log = work / f"{name}.log"
        argv = ["-m", "benchmarks.scale.train_probe", str(model), "--variant", "lora-bf16", "--steps", str(steps),
                "--seq", str(p["seq"]), "--rank", str(rank)]
        code, peak, wall = run_child(argv, log)
        if code != 0:
            raise RuntimeError(f"{name} failed (exit {code}); see {log}")
        return {**last_json_line(log), "process_peak_mib": peak, "wall_s": wall, "shape": shape,
                "params": parameter_count(shape)}

    return cached(work, name, fresh, measure)


def measure(work: Path, quick: bool, fresh: bool = False, keep_checkpoints: tuple[str, ...] = ("7b",),
            known: dict[str, dict] | None = None) -> dict:
    """known: shape -> a result of the same step measured elsewhere (part 1's 7B LoRA run), reused."""
    p = plan(quick)
    work.mkdir(parents=True, exist_ok=True)
    sizes = []
    for shape in p["sizes"]:
        if known and shape in known:
            sizes.append({**known[shape], "shape": shape, "params": parameter_count(shape)})
            continue
        sizes.append(step_point(work, shape, 16, p, fresh))
        if shape != p["rank_shape"] and shape not in keep_checkpoints:
            shutil.rmtree(work / f"llama-{shape}", ignore_errors=True)  # disk: a 3B checkpoint is 6 GB
    by_shape = {point["shape"]: point for point in sizes}  # the r=16 point of the rank curve is measured already
    ranks = [by_shape[p["rank_shape"]] if r == 16 and p["rank_shape"] in by_shape
             else step_point(work, p["rank_shape"], r, p, fresh) for r in p["ranks"]]
    return {"plan": p, "sizes": sizes, "ranks": ranks}


def steady_step(point: dict) -> float:
    """Seconds per step after the first (which also pays one-time set-up)."""
    steps = point["step_s"]
    return statistics.median(steps[1:]) if len(steps) > 1 else steps[0]


def plot(path: Path, xs: list[float], series: dict[str, list[float]], xlabel: str, title: str,
         logx: bool = True) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.6))
    axes = axes if len(series) > 1 else [axes]
    for ax, (label, ys) in zip(axes, series.items(), strict=True):
        ax.plot(xs, ys, marker="o")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping minor labels
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(results: dict, out: Path, serving_curve: Path | None) -> Section:
    p = results["plan"]
    files = []
    rows = ["| model | parameters | s / step | step peak GiB | trainable (r=16) |", "|---|---|---|---|---|"]
    for point in results["sizes"]:
        rows.append(f"| {point['shape']} | {point['params'] / 1e9:.2f}B | {steady_step(point):.2f} | "
                    f"{point['step_peak_mib'] / 1024:.2f} | {point['trainable'] / 1e6:.1f}M |")
    rank_rows = ["| rank | s / step | step peak GiB | trainable |", "|---|---|---|---|"]
    for point in results["ranks"]:
        rank_rows.append(f"| {point['rank']} | {steady_step(point):.2f} | {point['step_peak_mib'] / 1024:.2f} | "
                         f"{point['trainable'] / 1e6:.1f}M |")
    out.mkdir(parents=True, exist_ok=True)
    size_png, rank_png = out / "scale_model_size.png", out / "scale_rank.png"
    plot(size_png, [pt["params"] / 1e9 for pt in results["sizes"]],
         {"seconds per step": [steady_step(pt) for pt in results["sizes"]],
          "step peak RSS (GiB)": [pt["step_peak_mib"] / 1024 for pt in results["sizes"]]},
         "parameters (billions)", f"LoRA r=16, bf16 base, 1 x {p['seq']} tokens, gradient checkpointing")
    plot(rank_png, [pt["rank"] for pt in results["ranks"]],
         {"seconds per step": [steady_step(pt) for pt in results["ranks"]],
          "step peak RSS (GiB)": [pt["step_peak_mib"] / 1024 for pt in results["ranks"]]},
         "LoRA rank", f"{p['rank_shape']} Llama, bf16 base, 1 x {p['seq']} tokens")
    files += [size_png, rank_png]
    serving = "Serving: not measured in this run (no serving_curve.json)."
    if serving_curve is not None and serving_curve.is_file():
        curve = json.loads(serving_curve.read_text())
        serve_png = out / "scale_serving.png"
        _plot_serving(serve_png, curve)
        files.append(serve_png)
        batch = ", ".join(f"{c} clients: {t:.0f} tok/s" for c, t in curve.get("batch", []))
        adapters = ", ".join(f"{c} adapters: {t:.0f} tok/s" for c, t in curve.get("adapters", []))
        serving = f"Serving throughput (generated tokens/s): {batch}. By adapter count: {adapters}. " \
                  f"![serving]({serve_png.name})"
    body = f"""Training step (LoRA r=16 on all linear layers, bf16 base, gradient checkpointing, AdamW,
batch 1 x {p['seq']}, median step after the first) against model size:

{chr(10).join(rows)}

![model size]({size_png.name})

Against rank ({p['rank_shape']} shape):

{chr(10).join(rank_rows)}

![rank]({rank_png.name})

{serving}"""
    return Section("How cost grows", body, [], files)


def _plot_serving(path: Path, curve: dict) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "batch", "concurrent clients"), (axes[1], "adapters", "adapters available")):
        points = curve.get(key, [])
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("generated tokens / s")
        ax.grid(alpha=0.3)
    fig.suptitle("lorakit serve")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    results = measure(args.work, args.quick, args.fresh)
    print(section(results, args.out, args.out / "serving_curve.json").markdown)


if __name__ == "__main__":
    main()
