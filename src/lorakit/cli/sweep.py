"""Search hyperparameters with Optuna: each trial is a `lorakit train` run (CONFIG plus the trial's values), trained in
its own process; the study lives in a database, so a killed sweep resumes and several sweeps share one study.

SPACE.yaml maps config keys to choices or ranges (docs/sweep.md has every form):
    training.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    lora.r: [4, 8, 16]
    lora.target_modules: {choices: {qv: [query, value], all: all-linear}}

Trials are compared on the eval metric (training.metric: accuracy for classification, else the loss) of their final
weights; each evaluation is reported to the pruner, which stops a trial that trails the others at the same step.
A failed or diverged trial is recorded with its error and the study goes on. OUT gets study.db (the default storage),
trials/trial-NNNN/ (normal run folders), logs/, sweep.md (the trials ranked), plots/, best_config.yaml and best/ (a
copy of the best adapter). Rerunning the same command resumes: finished trials are kept, interrupted ones rerun.

examples:
  lorakit sweep configs/demo.yaml --space configs/spaces/demo.yaml --trials 16 --workers 2
  lorakit sweep configs/demo.yaml training.max_steps=100 --space grid.yaml --sampler grid --pruner none
  lorakit sweep cfg.yaml --space s.yaml --trials 64 --storage postgresql+psycopg://me:pw@db-host/sweeps --study r
  lorakit sweep configs/demo.yaml --space configs/spaces/demo.yaml --out sweeps/demo --report-only
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from lorakit.errors import ConfigError

SAMPLER_NAMES = ("tpe", "random", "grid")


def define(parser: argparse.ArgumentParser, items_nargs: str | None = "*") -> None:
    from lorakit.sweep.study import PRUNERS

    parser.add_argument("items", nargs=items_nargs, metavar="CONFIG|KEY=VALUE",
                        help="a YAML train config (none: the demo's), then overrides every trial gets")
    parser.add_argument("--space", metavar="SPACE.yaml", help="the search space: config keys to choices or ranges")
    parser.add_argument("--trials", type=int, metavar="N",
                        help="trials in the study in all (default with --sampler grid: the grid's size)")
    parser.add_argument("--workers", type=int, default=None, metavar="K", help="trials at once in this process (1)")
    parser.add_argument("--threads-per-trial", type=int, default=None, metavar="T",
                        help="torch threads of each trial (default: the CPU cores / K)")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help="tpe (default), random or grid")
    parser.add_argument("--pruner", choices=PRUNERS, default=None,
                        help="median (default), halving (successive halving), hyperband or none")
    parser.add_argument("--storage", metavar="URL",
                        help="an SQLAlchemy URL or an SQLite file (default: OUT/study.db)")
    parser.add_argument("--study", metavar="NAME", help="the study's name in the storage (default: OUT's name)")
    parser.add_argument("--out", metavar="OUT", help="the sweep's folder (default: sweeps/<config name>)")
    parser.add_argument("--seed", type=int, default=None, help="the sampler's seed (0)")
    parser.add_argument("--report-only", action="store_true", help="rewrite OUT's report from the study, run nothing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    define(parser, argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    from lorakit.cli.train import reparse, split_items

    args = reparse(args, define, "lorakit sweep", __doc__)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("lorakit sweep needs Optuna: pip install 'lorakit[sweep]'") from None
    config, _ = split_items(args.items)
    out = Path(args.out or Path("sweeps") / (Path(config).stem if config else "demo"))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for the sweep")
    if args.report_only:
        return _report_only(args, out)
    if not args.space:
        raise ConfigError("--space SPACE.yaml is needed: the config keys to search and their choices or ranges "
                          "(docs/sweep.md)")
    plan, metric = _plan(args, out)
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.sweep.run import check_first_trial, run_sweep
    from lorakit.sweep.study import open_storage

    quiet_transformers()
    if not plan.spec.storage.startswith("sqlite"):  # a server that cannot be reached: one line, nothing made
        open_storage(plan.spec.storage)
    print(f"lorakit sweep: checking the config and the first trial's start ({plan.space.source})", flush=True)
    check_first_trial(plan.items, plan.space, plan.base, out)
    record = {"config": config or "(the demo's config)", "command": _command_line()}
    study = run_sweep(plan, metric, record, say=lambda line: print(line, flush=True))
    _print_result(study, out)
    return 0


def _plan(args: argparse.Namespace, out: Path):
    from lorakit.sweep.run import check_space, sweep_metric
    from lorakit.sweep.space import load_space
    from lorakit.sweep.study import StudySpec, storage_url
    from lorakit.sweep.worker import SweepPlan

    space = load_space(args.space)
    workers = 1 if args.workers is None else args.workers
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    threads = args.threads_per_trial
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    if threads < 1:
        raise ConfigError(f"--threads-per-trial {threads}: expected at least 1")
    sampler = args.sampler or "tpe"
    trials = args.trials
    if trials is None:
        if sampler != "grid":
            raise ConfigError(f"--trials N is needed with --sampler {sampler} (a grid's size is its default)")
        trials = space.grid_size()
    if trials < 1:
        raise ConfigError(f"--trials {trials}: expected at least 1")
    if sampler == "grid":
        space.grid()  # refuses a continuous range now, not at the first trial
    cfg, base = check_space(list(args.items), space)
    spec = StudySpec(storage=storage_url(args.storage, out), name=args.study or out.resolve().name,
                     sampler=sampler, pruner=args.pruner or "median", seed=0 if args.seed is None else args.seed)
    return SweepPlan(items=list(args.items), space=space, sweep_dir=out, spec=spec, trials=trials, workers=workers,
                     threads=threads, base=base), sweep_metric(cfg)


def _report_only(args: argparse.Namespace, out: Path) -> int:
    import optuna

    from lorakit.sweep.report import write_report
    from lorakit.sweep.study import open_storage, redact, storage_url

    url = storage_url(args.storage, out)
    name = args.study or out.resolve().name
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise ConfigError(f"no study {name!r} in {redact(url)}; give --study NAME or the sweep's --out") from None
    write_report(study, out)
    _print_result(study, out)
    return 0


def _print_result(study, out: Path) -> None:
    from optuna.trial import TrialState

    states = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    counts = ", ".join(f"{n} {s.name.lower()}" for s, n in states.items())
    print(f"lorakit sweep: done ({counts}); report: {out / 'sweep.md'}")
    if states[TrialState.COMPLETE]:
        best = study.best_trial
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        print(f"best: trial {best.number}, {study.user_attrs.get('metric', 'value')} {best.value:.4f} ({params}); "
              f"adapter {out / 'best'}, config {out / 'best_config.yaml'}")


def _command_line() -> str:
    return "lorakit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "lorakit sweep"
