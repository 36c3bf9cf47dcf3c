"""The Optuna study behind a sweep: its storage (an SQLite file by default; any SQLAlchemy URL, e.g. PostgreSQL, so
that `lorakit sweep` on many machines shares one study), the samplers and pruners by name, and the checks that a
resumed study is the same search."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError
from lorakit.sweep.space import SearchSpace

HEARTBEAT_S = 20  # a running trial's worker writes a heartbeat this often (RDB storage)
GRACE_S = 90  # ... and a trial silent this long is taken as killed: marked failed, its parameters tried again


def _tpe(space: SearchSpace, seed: int | None) -> Any:
    import optuna

    # constant_liar: workers running at once see each other's running trials and draw apart
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, 2 * len(space.params))),
                                      constant_liar=True)


def _random(space: SearchSpace, seed: int | None) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _grid(space: SearchSpace, seed: int | None) -> Any:
    import optuna

    size = space.grid_size()

    class AskTellGrid(optuna.samplers.GridSampler):
        """Optuna's grid for ask-and-tell: its after_trial calls study.stop(), which only works inside
        study.optimize; the workers stop on is_exhausted() instead (sweep/worker.py), which here also counts the
        points still running (Optuna's would hand a running point to a second worker once all are started)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

        def is_exhausted(self, study: Any) -> bool:
            started = {t.system_attrs.get("grid_id") for t in study.get_trials(deepcopy=False)
                       if t.state.is_finished() or t.state == optuna.trial.TrialState.RUNNING}
            return len(started - {None}) >= size

    return AskTellGrid(space.grid(), seed=seed)


SAMPLERS: dict[str, Callable[[SearchSpace, int | None], Any]] = {"tpe": _tpe, "random": _random, "grid": _grid}


def build_pruner(name: str) -> Any:
    import optuna

    pruners = {
        "none": optuna.pruners.NopPruner,
        # a trial whose value at a step is worse than the median of earlier trials' at that step stops there
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "halving": optuna.pruners.SuccessiveHalvingPruner,  # asynchronous successive halving
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    if name not in pruners:
        raise ConfigError(f"--pruner {name}: expected one of {sorted(pruners)}")
    return pruners[name]()


PRUNERS = ("none", "median", "halving", "hyperband")


@dataclass
class StudySpec:
    """What names one study and how it searches; the trial processes rebuild the pruner from it."""

    storage: str
    name: str
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> StudySpec:
        return cls(**json.loads(text))


def storage_url(value: str | None, sweep_dir: Path) -> str:
    """The SQLAlchemy URL: the default is sweep_dir/study.db; a bare path means an SQLite file."""
    if not value:
        return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).resolve()}"


def open_storage(url: str) -> Any:
    import optuna
    from optuna.storages import RDBStorage

    quiet_optuna()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 120}}  # workers wait for the file's lock instead of failing
    try:
        return _with_retries(lambda: RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                grace_period=GRACE_S, heartbeat_stale_trial_callback=requeue))
    except (ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(f"storage {redact(url)}: its database driver is not installed ({exc}); for PostgreSQL: "
                          f"pip install 'psycopg[binary]' and a URL postgresql+psycopg://USER:PASS@HOST/DB") from None
    except Exception as exc:  # sqlalchemy's errors: a server that is down, a bad URL, a folder that cannot be made
        if isinstance(exc, optuna.exceptions.OptunaError) or type(exc).__module__.startswith("sqlalchemy"):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"storage {redact(url)}: cannot open it ({first}); check the URL, that the "
                              f"server runs and the user may create tables") from None
        raise


def _with_retries(make: Callable[[], Any], attempts: int = 5) -> Any:
    """Sweeps started at once on a new database race to create Optuna's tables; the loser's CREATE fails (a
    unique-key violation on PostgreSQL, "already exists" or a lock on SQLite). The tables exist a moment later, so
    it tries again."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception as exc:
            racing = type(exc).__name__ == "IntegrityError" or (
                type(exc).__name__ == "OperationalError" and ("already exists" in str(exc) or "locked" in str(exc)))
            if attempt == attempts - 1 or not racing:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def quiet_optuna() -> None:
    """lorakit says what happens in its own lines: Optuna's info log and its notes on experimental features (the
    heartbeat, used here in ask-and-tell form) would repeat or confuse them."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def requeue(study: Any, trial: Any) -> None:
    """Queue an interrupted trial's parameters again (a killed sweep, or a worker whose heartbeat stopped)."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def redact(url: str) -> str:
    """The URL without its password, for messages and reports."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def build_sampler(spec: StudySpec, space: SearchSpace) -> Any:
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {spec.sampler}: expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[spec.sampler](space, spec.seed)


def load_study(spec: StudySpec) -> Any:
    """The study as a trial process sees it: it only reports evaluations and asks the pruner (rebuilt from the
    spec, so it decides as the sweep's would); it never samples, so its sampler is a plain random one."""
    import optuna

    return optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage),
                             sampler=optuna.samplers.RandomSampler(), pruner=build_pruner(spec.pruner))


def open_study(spec: StudySpec, space: SearchSpace, metric: str, record: dict[str, Any]) -> Any:
    """Create the study, or join the one of that name: then it must be the same search (space, metric)."""
    import optuna

    storage = open_storage(spec.storage)
    direction = "minimize" if metric == "loss" else "maximize"
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True, direction=direction,
                                sampler=build_sampler(spec, space), pruner=build_pruner(spec.pruner))
    mine = {"metric": metric, "space": json.dumps(space.raw, sort_keys=True)}
    theirs = {key: study.user_attrs.get(key) for key in mine}
    if theirs["metric"] is None:  # a new study: record what it searches
        for key, value in {**record, **mine, "sampler": spec.sampler, "pruner": spec.pruner}.items():
            study.set_user_attr(key, value)
    elif theirs != mine:
        what = "metric" if theirs["metric"] != metric else "search space"
        raise ConfigError(f"study {spec.name!r} in {redact(spec.storage)} was made with another {what}; "
                          f"resume it with the same config and space, or start a new one with --study NAME")
    return study
