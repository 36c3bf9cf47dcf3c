"""The PostgreSQL fixture is real: two OS processes share one Optuna study on it, and each test gets its own empty
database. Plain optuna and SQLAlchemy here, not lorakit: these tests check the set-up the sweep tests stand on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

# One worker: load the study, wait until the other worker is there too (so the two really run at the same time),
# then run 4 trials of (x - 2)^2, each marked with this process's id.
WORKER = """
import os, sys, time
from pathlib import Path
import optuna

url, mine, other = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="shared", storage=url, sampler=optuna.samplers.RandomSampler())
mine.touch()
deadline = time.monotonic() + 60
while not other.exists():
    if time.monotonic() > deadline:
        sys.exit("the other worker never started")
    time.sleep(0.02)

def objective(trial):
    trial.set_user_attr("pid", os.getpid())
    x = trial.suggest_float("x", -10.0, 10.0)
    time.sleep(0.2)  # long enough that the two workers' trials interleave
    return (x - 2.0) ** 2

study.optimize(objective, n_trials=4)
"""


def test_two_processes_share_one_study(postgres_url: str, tmp_path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # made here first, so the workers only load it (creating the schema twice at once is not what this tests)
    optuna.create_study(study_name="shared", storage=postgres_url)
    marks = [tmp_path / "a", tmp_path / "b"]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, str(mine), str(other)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for mine, other in (marks, marks[::-1])]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    trials = optuna.load_study(study_name="shared", storage=postgres_url).get_trials(deepcopy=False)
    assert len(trials) == 8
    assert sorted(t.number for t in trials) == list(range(8))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.value == pytest.approx((t.params["x"] - 2.0) ** 2)
    by_pid: dict[int, list] = {}
    for t in trials:
        by_pid.setdefault(t.user_attrs["pid"], []).append(t)
    assert sorted(by_pid) == sorted(w.pid for w in workers)
    assert [len(ts) for ts in by_pid.values()] == [4, 4]
    # the two workers ran at the same time: each one's span of trials overlaps the other's
    spans = [(min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts)) for ts in by_pid.values()]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans

    # a second code path: the rows are in PostgreSQL's own tables, read without optuna
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT version()")).startswith("PostgreSQL")
            rows = conn.execute(sa.text("SELECT number, state FROM trials ORDER BY number")).all()
    finally:
        engine.dispose()
    assert [(n, str(s).rsplit(".", 1)[-1]) for n, s in rows] == [(n, "COMPLETE") for n in range(8)]


_seen: list[str] = []  # the databases earlier runs of the test below were given


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_database(postgres_url: str, run: int) -> None:
    name = sa.engine.make_url(postgres_url).database
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            tables = conn.execute(sa.text("SELECT table_name FROM information_schema.tables "
                                          "WHERE table_schema = 'public'")).scalars().all()
            assert tables == [], f"run {run} got a database that is not empty: {tables}"
            # the run before made this same table; a shared database would make this CREATE fail
            conn.execute(sa.text("CREATE TABLE marker (run integer)"))
            conn.execute(sa.text("INSERT INTO marker VALUES (:run)"), {"run": run})
            assert conn.scalar(sa.text("SELECT run FROM marker")) == run
            existing = set(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()
    assert name not in _seen
    assert name in existing
    assert not existing & set(_seen), "an earlier test's database was not dropped"
    _seen.append(name)
