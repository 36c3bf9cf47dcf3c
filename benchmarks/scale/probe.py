"""Run one measurement in a child process and read its own peak RSS from the kernel (os.wait4), so a probe that
leaves the parent's memory untouched is measured alone. Results are cached as JSON in the work folder: rerunning
the report reuses every measurement already made (--fresh remeasures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_child(argv: list[str], log: Path, timeout: float | None = None) -> tuple[int, float, float]:
    """(exit status, peak RSS MiB, wall seconds) of `python argv...` run from the repository root."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    start = time.perf_counter()
    with open(log, "w") as handle:
        child = subprocess.Popen([sys.executable, *argv], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 1024, time.perf_counter() - start


def cached(work: Path, name: str, fresh: bool, measure) -> dict:
    """measure() -> dict, stored as work/name.json; an existing file is reused unless `fresh`."""
    path = work / f"{name}.json"
    if path.is_file() and not fresh:
        return json.loads(path.read_text())
    result = measure()
    path.write_text(json.dumps(result, indent=2))
    return result


def last_json_line(log: Path) -> dict:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result in {log}:\n" + "\n".join(log.read_text().splitlines()[-20:]))
