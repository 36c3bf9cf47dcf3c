"""A real PostgreSQL server for the sweep tests: one per session (started by scripts/postgres.sh when it is not
running), and a fresh empty database per test, dropped afterwards."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DEFAULT_URL = "postgresql+psycopg://lorakit:lorakit@127.0.0.1:5432/lorakit_test"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"
CONNECT_TIMEOUT_S = 3


def _connect(url: str, database: str | None = None):
    """An autocommit psycopg connection (CREATE / DROP DATABASE cannot run inside a transaction)."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                           dbname=database or u.database, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)


def _reachable(url: str) -> str | None:
    """None when the server takes a login at `url`, else why not (one line)."""
    try:
        with _connect(url) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure means "not usable here"; the message says which
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _start_server() -> tuple[str | None, str]:
    """Run scripts/postgres.sh once: (the URL it printed, "") or (None, the reason it gave)."""
    try:
        done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"scripts/postgres.sh did not finish ({exc})"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"scripts/postgres.sh exited {done.returncode}"
        return None, reason.removeprefix("postgres.sh: cannot start PostgreSQL: ")
    return done.stdout.strip(), ""


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A SQLAlchemy URL of a PostgreSQL server taking logins; the tests skip, saying why, where none can start."""
    chosen = os.environ.get("LORAKIT_TEST_POSTGRES_URL")  # empty when scripts/test.sh could not start one
    url = chosen or DEFAULT_URL
    if _reachable(url) is None:
        return url
    started, reason = _start_server()
    if started is not None:
        # the script makes the default server; a URL set by hand names the server the user wants
        url = chosen or started
        reason = _reachable(url) or ""
        if reason and chosen:
            from sqlalchemy.engine import make_url

            reason = f"LORAKIT_TEST_POSTGRES_URL={make_url(url).render_as_string(hide_password=True)}: {reason}"
    if reason:
        pytest.skip(f"PostgreSQL could not start here: {reason}; run bash scripts/postgres.sh")
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh, empty database of its own for this test; dropped (FORCE) afterwards."""
    from sqlalchemy.engine import make_url

    name = f"lorakit_t_{uuid.uuid4().hex[:16]}"
    with _connect(postgres_server) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE ends connections a test left open (an engine's pool, a killed worker)
        with _connect(postgres_server) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
