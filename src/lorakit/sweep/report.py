"""The end of a sweep: sweep.md (every trial ranked in one table), plots/, best_config.yaml and best/.

What each trial left behind is read from the study alone (trial.params, trial.value, trial.user_attrs: run_dir,
wall_s, error, pruned_at, summary) plus two files of the best run folder. Any of it may be missing (a failed trial
has no summary, a run folder may have been deleted): the report says what it could not do instead of failing,
because it is written at the end of a sweep that may have run for hours.

Every file is written atomically (lorakit/io/atomic.py): sweep.md and best_config.yaml as single files, plots/
and best/ as whole directories, so a reader never sees a half-written report and an older best/ is replaced in
one rename, or kept when there is no new best.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from lorakit.io.atomic import atomic_directory, replace_files

# a table row's place: complete (by value), pruned (by value), failed, then unfinished
STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2, TrialState.RUNNING: 3,
               TrialState.WAITING: 3}
STATE_WORDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
# run files that are not part of the adapter (best/ is what `lorakit eval` and PEFT load)
NOT_ADAPTER = {"metrics.jsonl", "curves.png", "spectrum.png"}
RUN_CONFIG = "train_config.yaml"


@dataclass
class Plots:
    """The PNGs drawn (file name -> bytes) and, for each plot left out, why."""

    images: dict[str, bytes] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# -- the entry point ----------------------------------------------------------------------------------------------
def write_report(study: optuna.Study, sweep_dir: Path) -> dict[str, Path]:
    """Write the sweep's report into `sweep_dir`; returns {name relative to sweep_dir: path} of what was written."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    trials = ranked_trials(study)
    best = trials[0] if trials and trials[0].state == TrialState.COMPLETE and trials[0].value is not None else None
    written: dict[str, Path] = {}
    notes: list[str] = []  # what the Best section could not do

    plots = draw_plots(study, trials)
    if plots.images:
        with atomic_directory(sweep_dir / "plots") as tmp:
            for name, data in plots.images.items():
                (tmp / name).write_bytes(data)
        written.update({f"plots/{name}": sweep_dir / "plots" / name for name in plots.images})
    else:  # an earlier report's plots would describe another state of the study
        for name in plots.skipped:
            (sweep_dir / "plots" / name).unlink(missing_ok=True)

    if best is not None:
        run_dir = _run_dir(best)
        if run_dir is None or not run_dir.is_dir():
            notes.append(f"the best trial's run folder {run_dir or '(not recorded)'} is missing, so there is no "
                         "best_config.yaml or best/")
        else:
            config_note = write_best_config(study, best, run_dir, sweep_dir)
            if config_note:  # an older best_config.yaml would not match the new best/
                notes.append(config_note)
                (sweep_dir / "best_config.yaml").unlink(missing_ok=True)
            else:
                written["best_config.yaml"] = sweep_dir / "best_config.yaml"
            copy_best_adapter(run_dir, sweep_dir / "best")
            written["best"] = sweep_dir / "best"

    text = render_markdown(study, trials, best, plots, sweep_dir, written, notes)
    replace_files(sweep_dir, {"sweep.md": text.encode("utf-8")})
    written["sweep.md"] = sweep_dir / "sweep.md"
    return written


# -- reading the study --------------------------------------------------------------------------------------------
def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials best first, then pruned ones (by their last value), then failed, then unfinished ones."""
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def key(trial: FrozenTrial) -> tuple[int, int, float, int]:
        value = trial_value(trial)
        scored = trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and value is not None
        return STATE_ORDER.get(trial.state, 4), 0 if scored else 1, sign * value if scored else 0.0, trial.number

    return sorted(study.get_trials(deepcopy=False), key=key)


def trial_value(trial: FrozenTrial) -> float | None:
    """The trial's value; a pruned trial without one gives the last value it reported."""
    if trial.value is not None:
        return float(trial.value)
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def summary_of(trial: FrozenTrial) -> dict[str, Any]:
    summary = trial.user_attrs.get("summary")
    return summary if isinstance(summary, dict) else {}


def _run_dir(trial: FrozenTrial) -> Path | None:
    run_dir = trial.user_attrs.get("run_dir")
    return Path(run_dir) if run_dir else None


def searched_params(trials: list[FrozenTrial]) -> list[str]:
    """Every param any trial has, in the order they first appear (the order of the search space)."""
    names: dict[str, None] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        names.update(dict.fromkeys(trial.params))
    return list(names)


def lora_rank(trial: FrozenTrial) -> int | None:
    """lora.r of a trial: the searched value, else the one in its run folder's train_config.yaml."""
    r = trial.params.get("lora.r")
    if r is None:
        config = _read_yaml(_run_dir(trial) / RUN_CONFIG) if _run_dir(trial) else None
        section = config.get("lora") if isinstance(config, dict) else None
        r = section.get("r") if isinstance(section, dict) else None
    return int(r) if isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 else None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


# -- best_config.yaml and best/ -----------------------------------------------------------------------------------
def write_best_config(study: optuna.Study, best: FrozenTrial, run_dir: Path, sweep_dir: Path) -> str | None:
    """The best run's resolved config with output.dir moved to <sweep_dir>/best-run; None, or why it was not
    written."""
    config = _read_yaml(run_dir / RUN_CONFIG)
    if not isinstance(config, dict):
        return f"no best_config.yaml: {run_dir / RUN_CONFIG} is missing or not a YAML mapping"
    output = config.get("output")
    config["output"] = {**(output if isinstance(output, dict) else {}), "dir": str(sweep_dir / "best-run")}
    metric = study.user_attrs.get("metric", "value")
    params = ", ".join(f"{name}={_one_line(value)}" for name, value in best.params.items()) or "(none)"
    header = [
        f"best trial of the sweep in {sweep_dir}: trial {best.number}, {metric} {best.value:.4f} "
        f"({study.direction.name.lower()})",
        f"params: {params}",
        f"the resolved config of {run_dir}, with output.dir set to {sweep_dir / 'best-run'}",
        "lorakit train best_config.yaml retrains it",
    ]
    text = "".join(f"# {_one_line(line)}\n" for line in header) + yaml.safe_dump(config, sort_keys=False)
    replace_files(sweep_dir, {"best_config.yaml": text.encode("utf-8")})
    return None


def copy_best_adapter(run_dir: Path, target: Path) -> None:
    """Copy the run's top-level files but its logs and pictures (no checkpoints/ or best/, no hidden leftovers)
    into target, replacing an older copy in one rename. A run whose output.adapter_name is not "default" saved its
    adapter in <run_dir>/<name>/ (PEFT's layout): that folder comes too."""
    config = _read_yaml(run_dir / RUN_CONFIG)
    output = config.get("output") if isinstance(config, dict) else None
    name = output.get("adapter_name") if isinstance(output, dict) else None
    with atomic_directory(target) as tmp:
        for path in sorted(run_dir.iterdir()):
            if path.is_file() and path.name not in NOT_ADAPTER and not path.name.startswith("."):
                shutil.copyfile(path, tmp / path.name)
        if isinstance(name, str) and name not in ("default", "") and (run_dir / name).is_dir():
            shutil.copytree(run_dir / name, tmp / name)


# -- plots --------------------------------------------------------------------------------------------------------
def draw_plots(study: optuna.Study, trials: list[FrozenTrial]) -> Plots:
    plots = Plots()
    metric = study.user_attrs.get("metric", "value")
    if not any(trial_value(t) is not None for t in trials):
        plots.skipped["optimization_history.png"] = "no trial reported a value yet"
    else:
        plots.images["optimization_history.png"] = _history_png(study, trials, metric)
    importances, why = param_importances(study, trials)
    if importances:
        plots.images["param_importances.png"] = _importance_png(importances, metric)
    else:
        plots.skipped["param_importances.png"] = why
    ranks = [(r, t) for t in trials if (r := lora_rank(t)) is not None and trial_value(t) is not None
             and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if ranks:
        plots.images["rank_vs_metric.png"] = _rank_png(ranks, metric)
    else:
        plots.skipped["rank_vs_metric.png"] = ("no scored trial has a lora.r (neither searched nor in its run "
                                               "folder's train_config.yaml)")
    return plots


def param_importances(study: optuna.Study, trials: list[FrozenTrial]) -> tuple[dict[str, float], str]:
    """Optuna's fANOVA importances (seeded: the same study draws the same bars), or {} and why not."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if len(complete) < 2:
        return {}, f"{len(complete)} complete trial(s); importances need at least 2"
    if not any(len({repr(t.params.get(name)) for t in complete}) > 1 for name in searched_params(complete)):
        return {}, "no searched param took more than one value among the complete trials"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # optuna refuses degenerate studies in several ways; the report goes on without it
        return {}, f"optuna could not compute them: {_one_line(str(exc)) or type(exc).__name__}"
    if not importances:
        return {}, "no param is shared by all complete trials"
    return dict(importances), ""


def _scored(trials: list[FrozenTrial], state: TrialState) -> list[tuple[FrozenTrial, float]]:
    """(trial, value) of the trials in `state` that have a value, in the given order."""
    return [(t, v) for t in trials if t.state == state and (v := trial_value(t)) is not None]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, title: str) -> bytes:
    """The look of lorakit's training curves (train/report.py): a constrained layout, a titled figure, 100 dpi."""
    plt = _pyplot()
    fig.suptitle(title, fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _history_png(study: optuna.Study, trials: list[FrozenTrial], metric: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    by_number = sorted(trials, key=lambda t: t.number)
    complete = _scored(by_number, TrialState.COMPLETE)
    if complete:
        ax.plot([t.number for t, _ in complete], [v for _, v in complete], "o", color="tab:blue", label="complete")
        better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        running, best = [], None
        for _, value in complete:
            best = value if best is None else better(best, value)
            running.append(best)
        ax.step([t.number for t, _ in complete], running, where="post", color="tab:orange", label="best so far")
    pruned = _scored(by_number, TrialState.PRUNED)
    if pruned:
        ax.plot([t.number for t, _ in pruned], [v for _, v in pruned], "o", mfc="none", color="tab:gray",
                label="pruned")
    failed = [t.number for t in by_number if t.state == TrialState.FAIL]
    if failed:  # on the floor of the axis: failures are visible without inventing a value
        floor, top = ax.get_ylim()
        ax.plot(failed, [floor] * len(failed), "x", color="tab:red", label="failed", clip_on=False)
        ax.set_ylim(floor, top)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    return _png(fig, f"optimization history ({study.direction.name.lower()} {metric})")


def _importance_png(importances: dict[str, float], metric: str) -> bytes:
    plt = _pyplot()
    names = list(importances)[::-1]  # the most important on top
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.45 * len(names)), layout="constrained")
    bars = ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set_xlim(0, 1)
    ax.set_xlabel("importance (fANOVA, share of the variance)")
    return _png(fig, f"param importances for {metric}")


def _rank_png(points: list[tuple[int, FrozenTrial]], metric: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for state, style in ((TrialState.COMPLETE, {"color": "tab:blue"}),
                         (TrialState.PRUNED, {"color": "tab:gray", "mfc": "none"})):
        chosen = [(r, trial_value(t)) for r, t in points if t.state == state]
        if chosen:
            ax.plot([r for r, _ in chosen], [v for _, v in chosen], "o", label=STATE_WORDS[state], **style)
    ax.set_xscale("log", base=2)
    ranks = sorted({r for r, _ in points})
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    ax.set_xlabel("lora.r")
    ax.set_ylabel(metric)
    ax.legend()
    return _png(fig, f"LoRA rank against {metric}")


# -- sweep.md -----------------------------------------------------------------------------------------------------
def render_markdown(study: optuna.Study, trials: list[FrozenTrial], best: FrozenTrial | None, plots: Plots,
                    sweep_dir: Path, written: dict[str, Path], notes: list[str]) -> str:
    attrs = study.user_attrs
    metric = attrs.get("metric", "value")
    direction = study.direction.name.lower()
    counts = [f"{sum(t.state in states for t in trials)} {word}" for word, states in (
        ("complete", {TrialState.COMPLETE}), ("pruned", {TrialState.PRUNED}), ("failed", {TrialState.FAIL}),
        ("running", {TrialState.RUNNING}), ("waiting", {TrialState.WAITING}))]
    counts = [c for c in counts if not c.startswith("0 ")]
    wall = sum(float(w) for t in trials if isinstance(w := t.user_attrs.get("wall_s"), (int, float)))
    lines = [f"# Sweep: {direction} {metric}", ""]
    if attrs.get("command"):
        lines.append(f"- command: `{_one_line(attrs['command'])}`")
    lines += [f"- config: `{attrs.get('config', '-')}`",
              f"- sampler: {attrs.get('sampler', '-')}, pruner: {attrs.get('pruner', '-')}, "
              f"direction: {direction} {metric}",
              f"- trials: {len(trials)}" + (f" ({', '.join(counts)})" if counts else ""),
              f"- wall time of all trials together: {_duration(wall)}",
              f"- {best_sentence(best, metric)}", "", "## Trials", ""]
    lines += trial_table(trials, metric)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {t.number}: {_error_line(t.user_attrs.get('error'))}" for t in failed]
    lines += ["", "## Plots", ""]
    for name in ("optimization_history.png", "param_importances.png", "rank_vs_metric.png"):
        label = name.removesuffix(".png").replace("_", " ")
        if name in plots.images:
            lines += [f"![{label}](plots/{name})", ""]
        else:
            lines += [f"- {label}: not drawn ({plots.skipped.get(name, 'no data')})", ""]
    lines += ["## Best", ""]
    if best is None:
        lines.append("No trial completed, so there is no best_config.yaml or best/ (an older best/ is left as it "
                     "was).")
    else:
        sentence = best_sentence(best, metric).removeprefix("best: ")
        lines += [sentence[0].upper() + sentence[1:], ""]
        if "best_config.yaml" in written:
            lines.append(f"- config: `{written['best_config.yaml']}` (the run's train_config.yaml, output.dir set "
                         f"to `{sweep_dir / 'best-run'}`)")
        if "best" in written:
            lines.append(f"- adapter: `{written['best']}/` (copied from `{_run_dir(best)}`)")
        lines += [f"- note: {note}" for note in notes]
        if "best_config.yaml" in written:
            lines += ["", "Retrain it:", "", "```bash", f"lorakit train {written['best_config.yaml']}", "```"]
    return "\n".join(lines).rstrip() + "\n"


def best_sentence(best: FrozenTrial | None, metric: str) -> str:
    if best is None:
        return "best: none (no trial completed)"
    params = ", ".join(f"{name}={format_param(value)}" for name, value in best.params.items())
    return f"best: trial {best.number} reached {metric} {best.value:.4f}" + (f" with {params}" if params else "") + "."


def trial_table(trials: list[FrozenTrial], metric: str) -> list[str]:
    """One markdown table: a row per trial in the given (ranked) order."""
    params = searched_params(trials)
    with_test = any(isinstance(summary_of(t).get("test_eval"), dict) for t in trials)
    header = ["rank", "trial", "state", metric, *([f"test {metric}"] if with_test else []), *params,
              "trainable", "adapter", "time (s)", "peak MiB", "steps"]
    rows = [header, ["---:", "---:", "---", "---:", *(["---:"] if with_test else []), *(["---"] * len(params)),
                     "---:", "---:", "---:", "---:", "---:"]]
    rank = 0
    for trial in trials:
        summary = summary_of(trial)
        rank += trial.state == TrialState.COMPLETE
        test = summary.get("test_eval")
        test_value = test.get(summary.get("metric") or metric) if isinstance(test, dict) else None
        wall = trial.user_attrs.get("wall_s", summary.get("time_s"))
        rows.append([
            str(rank) if trial.state == TrialState.COMPLETE else "-", str(trial.number), _state(trial),
            _number(trial_value(trial), "{:.4f}"), *([_number(test_value, "{:.4f}")] if with_test else []),
            *[format_param(trial.params[name]) if name in trial.params else "-" for name in params],
            _count(summary.get("trainable_params")), _bytes(summary.get("adapter_bytes")),
            _number(wall, "{:.1f}"), _number(summary.get("peak_rss_mb"), "{:.0f}"),
            _number(summary.get("steps"), "{:.0f}"),
        ])
    return ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def _state(trial: FrozenTrial) -> str:
    word = STATE_WORDS.get(trial.state, trial.state.name.lower())
    step = trial.user_attrs.get("pruned_at")
    if trial.state == TrialState.PRUNED and step is None and trial.intermediate_values:
        step = max(trial.intermediate_values)
    if trial.state == TrialState.PRUNED and step is not None:
        return f"{word} at step {step}"
    notes = []
    if trial.state == TrialState.COMPLETE and trial.user_attrs.get("same_as") is not None:
        notes.append(f"same values as trial {trial.user_attrs['same_as']}")  # the sweep did not train it again
    if trial.state == TrialState.COMPLETE and summary_of(trial).get("stopped_early"):
        notes.append("stopped early")
    return f"{word} ({', '.join(notes)})" if notes else word


# -- formatting ---------------------------------------------------------------------------------------------------
def format_param(value: Any) -> str:
    """Compact: 0.003 -> 3e-03, 0.00025 -> 2.5e-04, 0.5 -> 0.5, 8 -> 8, strings as given."""
    if isinstance(value, float) and value != 0 and not 1e-2 <= abs(value) < 1e4:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _one_line(value)


def _number(value: Any, fmt: str) -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return fmt.format(value) if ok else "-"


def _count(n: Any) -> str:
    """73,728 -> 73.7k."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{n:.0f}"


def _bytes(n: Any) -> str:
    """303,104 -> 296 KiB."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02.0f}s"
    return f"{minutes}m{secs:04.1f}s" if minutes else f"{secs:.1f}s"


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _error_line(error: Any, width: int = 200) -> str:
    """A failure in one line: a traceback's last line (the exception), else the message's first line."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    if not lines:
        return "(no error recorded)"
    line = lines[-1] if "Traceback (most recent call last)" in lines[0] else lines[0]
    return line if len(line) <= width else line[: width - 1] + "…"
