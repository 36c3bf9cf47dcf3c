"""The end of a run: a loss / eval curve PNG and a short summary (parameters, adapter size, time, memory)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

from lorakit.adapters import count_parameters
from lorakit.train.methods import saved_bytes
from lorakit.train.metrics import read_metrics
from lorakit.variants.training import report_rows


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_gpu_mb() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def human_time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:04.1f}s" if minutes else f"{secs:.1f}s"


def run_title(run_name: str, model: str | None, method: str, rank: int | None = None) -> str:
    """`alpaca · tiny-llama · lora r=8`: the run, the model (a path's or Hub id's last part), the method; for plot
    titles."""
    model = str(model or "model")
    model_name = Path(model.rstrip("/")).name or model
    return f"{run_name} · {model_name} · {method}" + (f" r={rank}" if rank is not None else "")


def plot_curves(records: list[dict[str, Any]], path: Path, title: str = "lorakit training") -> Path | None:
    """Three panels against the optimizer step: train and eval loss; the learning rate; eval accuracy / f1 (when
    present). `title` names the run (run_title). None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in records if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))]
    rates = [r for r in records if r.get("kind") == "train" and isinstance(r.get("lr"), (int, float))]
    evals = [r for r in records if r.get("kind") == "eval"]
    extra = [k for k in ("accuracy", "f1") if any(k in r for r in evals)]
    panels = 2 + bool(extra)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.8), squeeze=False, layout="constrained")
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    losses = [r for r in evals if isinstance(r.get("loss"), (int, float))]
    if losses:
        ax.plot([r["step"] for r in losses], [r["loss"] for r in losses], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("loss", fontsize=10)
    if train or losses:
        ax.legend()
    ax_lr = axes[0][1]
    ax_lr.plot([r["step"] for r in rates], [r["lr"] for r in rates], color="tab:green", lw=1)
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("learning rate", fontsize=10)
    ax_lr.set_ylim(bottom=0)  # warmup and decay read against zero
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if extra:
        ax2 = axes[0][2]
        for key in extra:
            points = [r for r in evals if key in r]
            ax2.plot([r["step"] for r in points], [r[key] for r in points], "o-", label=f"eval {key}")
        ax2.set_xlabel("optimizer step")
        ax2.set_ylim(0, 1)
        ax2.set_title("eval metrics", fontsize=10)
        ax2.legend()
    for panel in axes[0]:
        panel.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_spectrum(adapter_dir: Path, adapter_name: str, title: str) -> Path | None:
    """spectrum.png next to a saved LoRA adapter (lorakit/spectrum.py); None without matplotlib."""
    from lorakit.io.checkpoint import read_adapter
    from lorakit.spectrum import layer_infos, plot_spectra

    infos = layer_infos(read_adapter(adapter_dir, adapter_name))
    return plot_spectra(infos, Path(adapter_dir) / "spectrum.png", title=title)


def format_summary(summary: dict[str, Any]) -> str:
    """Aligned `name: value` lines for the terminal."""
    rows = [
        ("trainable params", f"{summary['trainable_params']:,} of {summary['total_params']:,} "
                             f"({summary['trainable_percent']:.3f}%)"),
        ("adapter size on disk" if summary.get("method", "lora") == "lora" else "saved weights on disk",
         human_bytes(summary["adapter_bytes"])),
        ("steps", f"{summary['steps']} ({summary['examples_per_step']} examples each)"),
        ("final train loss", _fmt(summary.get("final_train_loss"))),
    ]
    for key, value in (summary.get("final_eval") or {}).items():
        rows.append((f"eval {key}", _fmt(value)))
    for key, value in (summary.get("test_eval") or {}).items():
        rows.append((f"test {key}", _fmt(value)))
    if summary.get("best_step") is not None:
        rows.append(("best", f"{summary['metric']} {_fmt(summary['best_metric'])} at step {summary['best_step']}"))
    rows += report_rows(summary)  # what the run's variants add (lorakit.variants.training)
    rows.append(("time", human_time(summary["time_s"])))
    memory = f"{summary['peak_rss_mb']:.0f} MiB RSS"
    if summary.get("peak_gpu_mb") is not None:
        memory += f", {summary['peak_gpu_mb']:.0f} MiB GPU"
    rows.append(("peak memory", memory))
    rows.append(("output", str(summary["output_dir"])))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def write_summary(out_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]], plot: bool,
                  title: str = "lorakit training") -> None:
    """summary.json and (with matplotlib) curves.png, titled `title`, in the output directory."""
    import json

    out_dir = Path(out_dir)
    if plot:
        summary["plot"] = str(plot_curves(records, out_dir / "curves.png", title) or "") or None
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")


def build_summary(trainer: Any, final_eval: dict[str, float] | None, steps_now: int) -> dict[str, Any]:
    """The numbers of a finished run (trainer: a lorakit.train.trainer.Trainer)."""
    trainable, total = count_parameters(trainer.raw)
    records = read_metrics(trainer.out / "metrics.jsonl")
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    name = trainer.cfg.output.adapter_name
    progress = trainer.progress
    return {
        "trainable_params": trainable, "total_params": total, "trainable_percent": 100 * trainable / max(total, 1),
        "method": trainer.cfg.training.method,
        "adapter_bytes": saved_bytes(trainer.out, trainer.cfg.training.method, name),
        "steps": progress.step, "steps_this_session": steps_now, "examples_per_step": trainer.global_batch,
        "final_train_loss": train_losses[-1] if train_losses else None, "final_eval": final_eval,
        "metric": trainer.metric_name, "best_metric": progress.best_metric, "best_step": progress.best_step,
        "stopped_early": progress.stopped_early, "time_s": progress.elapsed_s, "tokens": progress.tokens,
        "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": peak_gpu_mb(), "output_dir": str(trainer.out),
        "data": dict(trainer.data_stats),
    }
