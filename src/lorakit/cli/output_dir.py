"""The folder a command writes (merge's model, combine's adapter): checked first, written aside, renamed into
place when complete (io/atomic.py's atomic_directory), so a failure leaves no half output and the old one whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lorakit.errors import ConfigError
from lorakit.io.atomic import atomic_directory


def check_output(out: Path, overwrite: bool, inputs: dict[str, Path]) -> None:
    """OUT must be a new or empty folder (or, with --overwrite, a folder to replace) that holds no input."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT {out} is a file; name a new folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another directory or pass --overwrite")
    target = out.resolve()
    for what, path in inputs.items():
        if target == path.resolve() or target in path.resolve().parents:
            raise ConfigError(f"OUT {out} holds {what} ({path}), which writing OUT would delete; choose another OUT")


@contextmanager
def output_directory(out: Path) -> Iterator[Path]:
    """A temporary folder beside OUT; on success it replaces OUT in one rename, on any error it is removed."""
    with atomic_directory(out) as tmp:
        umask = os.umask(0)  # mkdtemp makes the folder private (0700); OUT gets a new folder's usual permissions
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        yield tmp
