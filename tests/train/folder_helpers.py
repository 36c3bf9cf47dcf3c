"""Helpers for the output-folder tests: a byte-exact picture of a folder, and OS faults injected into writes."""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import pytest


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under folder (relative) -> its bytes (None for a folder). {} when the folder does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def one_line_error(capsys) -> str:
    """The CLI's stderr, checked to be one line with no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def fail_writes_under(monkeypatch: pytest.MonkeyPatch, root: Path, code: int) -> None:
    """Make every write under `root` fail with OSError(code): creating folders and files, opening for writing,
    renames and removals (how a read-only or full file system answers; as root, chmod would not stop us)."""
    root = str(Path(root).resolve())

    def under(path) -> bool:
        return str(Path(os.fsdecode(path)).resolve()).startswith(root)

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    real_open, real_mkdir, real_replace, real_rename = builtins.open, os.mkdir, os.replace, os.rename
    real_unlink, real_rmdir, real_os_open = os.unlink, os.rmdir, os.open

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(real, creates: bool):
        def fake(path, *args, **kwargs):
            # as the kernel does: a missing source (or an existing folder to create) is reported before EROFS
            if under(path) and os.path.lexists(path) != creates:
                refuse(path)
            return real(path, *args, **kwargs)
        return fake

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    for name, real in (("mkdir", real_mkdir), ("replace", real_replace), ("rename", real_rename),
                       ("unlink", real_unlink), ("rmdir", real_rmdir)):
        monkeypatch.setattr(os, name, guard(real, creates=name == "mkdir"))


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
