"""`lorakit sweep` on the real Rotten Tomatoes task (all-MiniLM-L6-v2), against issue 20's targets:

1. a pruned TPE search reaches within 0.5 accuracy points of the exhaustive grid's best with <= 1/3 of its steps;
2. 2 workers x 1 thread finish a 16-trial study >= 1.6x faster (wall) than 1 worker x 1 thread.

    python -m benchmarks.sweep_rt run OUT          # all the sweeps below, one after another (about 45 min here)
    python -m benchmarks.sweep_rt report OUT       # the tables, from OUT's studies (benchmarks/SWEEP.md)

Every trial is configs/demo.yaml (LoRA on query/value or all linear layers, batch 16, max_seq_len 40) on the
training split, compared on 400 validation reviews (a seeded sample of the 1,195, to keep evaluations short), over
configs/spaces/demo.yaml (lr x rank x layers: 16 points). Search trials run 48 steps with an evaluation every 16;
the scaling study runs the same 16 grid points at 16 steps, so start-up is a fair share of each trial.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH_STEPS, SCALE_STEPS, SEEDS, PRUNERS = 48, 16, (0, 1, 2), ("median", "halving")


def validation_sample(out: Path, size: int = 400) -> Path:
    from lorakit.corpora.rotten_tomatoes import rotten_tomatoes_splits

    rows = Path(rotten_tomatoes_splits()["validation"]).read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(rows)
    path = out / f"validation-{size}.jsonl"
    path.write_text("\n".join(rows[:size]) + "\n", encoding="utf-8")
    return path


def base_items(out: Path, steps: int) -> list[str]:
    from lorakit.corpora.rotten_tomatoes import rotten_tomatoes_splits

    train = rotten_tomatoes_splits()["train"]
    return [str(ROOT / "configs" / "demo.yaml"), f"data.train_file={train}",
            f"data.validation_file={validation_sample(out)}", f"training.max_steps={steps}",
            f"training.eval_every={16}", "output.plot=false", "--space", str(ROOT / "configs" / "spaces" / "demo.yaml")]


def sweep(out: Path, name: str, items: list[str], *options: str) -> float:
    """Run one `lorakit sweep` into out/name; returns its wall time in seconds."""
    command = [sys.executable, "-m", "lorakit", "sweep", *items, *options, "--out", str(out / name)]
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    walls = {}
    search = base_items(out, SEARCH_STEPS)
    walls["grid"] = sweep(out, "grid", search, "--sampler", "grid", "--pruner", "none", "--workers", "2")
    scale = [*base_items(out, SCALE_STEPS), "--sampler", "grid", "--pruner", "none", "--threads-per-trial", "1"]
    for workers in (1, 2):  # first, while nothing else runs: these are timed
        walls[f"scale-w{workers}"] = sweep(out, f"scale-w{workers}", scale, "--workers", str(workers))
    for pruner in PRUNERS:
        for seed in SEEDS:
            sweep(out, f"{pruner}-seed{seed}", search, "--sampler", "tpe", "--pruner", pruner, "--trials", "10",
                  "--workers", "2", "--seed", str(seed))
    (out / "walls.json").write_text(json.dumps(walls, indent=2))


def load(folder: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{folder / 'study.db'}"
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)


def trained_steps(study) -> int:
    """Optimizer steps actually trained (a trial that reused a finished one's result trained none)."""
    return sum((t.user_attrs.get("summary") or {}).get("steps") or 0 for t in study.trials
               if "same_as" not in t.user_attrs)


def search_row(study, label: str, grid_best: float, grid_steps: int) -> str:
    from optuna.trial import TrialState

    states = [t.state for t in study.trials]
    reused = sum("same_as" in t.user_attrs for t in study.trials)
    steps = trained_steps(study)
    gap = 100 * (grid_best - study.best_value)
    met = gap <= 0.5 and steps <= grid_steps / 3
    return (f"| {label} | {len(states)} ({states.count(TrialState.COMPLETE) - reused} / "
            f"{states.count(TrialState.PRUNED)} / {reused}) | {steps} | {steps / grid_steps:.2f} | "
            f"{study.best_value:.4f} ({study.best_trial.params}) | {gap:.2f} | {'yes' if met else 'no'} |")


def report(out: Path) -> str:
    grid = load(out / "grid")
    best, grid_steps = grid.best_trial, trained_steps(grid)
    lines = [f"Grid: {len(grid.trials)} trials, {grid_steps} steps; best accuracy {best.value:.4f} ({best.params})",
             "", "| search | trials (complete / pruned / reused) | steps | share of grid's | best accuracy | "
             "gap to grid best (pts) | met |", "|---|---|---|---|---|---|---|"]
    for pruner in PRUNERS:
        for seed in SEEDS:
            folder = out / f"{pruner}-seed{seed}"
            if (folder / "study.db").is_file():
                lines.append(search_row(load(folder), f"TPE + {pruner}, seed {seed}", best.value, grid_steps))
    walls = json.loads((out / "walls.json").read_text()) if (out / "walls.json").is_file() else {}
    for workers in (1, 2):
        study = load(out / f"scale-w{workers}")
        span = max(t.datetime_complete for t in study.trials) - min(t.datetime_start for t in study.trials)
        walls.setdefault(f"scale-w{workers}", span.total_seconds())
    one, two = walls["scale-w1"], walls["scale-w2"]
    met = "met" if one / two >= 1.6 else "not met"
    lines += ["", f"Scaling (16 trials x {SCALE_STEPS} steps, 1 thread per trial): 1 worker {one:.0f} s, "
                  f"2 workers {two:.0f} s: {one / two:.2f}x (target >= 1.6x: {met})"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("run", "report"))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.what == "run":
        run(args.out)
    print(report(args.out))


if __name__ == "__main__":
    main()
