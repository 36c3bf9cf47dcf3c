"""Replace several files of a directory as one unit: after an error, the old files are all back.

An adapter is two files (weights, then the config that carries the weights' checksum). Each new file is written
to a temporary file first; the old one is kept as a hidden backup (a hard link) until the last rename is done.
  - An exception at any point (disk full, Ctrl-C, a failing rename) puts the old files back and removes the
    temporary ones.
  - A hard kill between the renames leaves new weights next to the old config: their checksums disagree, and
    `recover_backup` hands the loader the backup of the old weights, which does match.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

BACKUP_SUFFIX = ".lorakit-backup"


def backup_path(target: Path) -> Path:
    return target.parent / f".{target.name}{BACKUP_SUFFIX}"


def replace_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write `files` ({file name: contents}) into `directory`, renamed into place in the given order."""
    temps: dict[str, Path] = {}
    backups: dict[str, Path] = {}
    replaced: list[str] = []
    try:
        for name, data in files.items():
            temps[name] = _write_temp(directory / name, data)
        for name in files:
            target = directory / name
            if target.exists():
                backups[name] = _make_backup(target)
            os.replace(temps[name], target)
            del temps[name]
            replaced.append(name)
        _fsync_directory(directory)
    except BaseException:
        for name in reversed(replaced):  # put the old files back (or remove files that are new)
            target = directory / name
            if name in backups:
                os.replace(backups.pop(name), target)
            else:
                target.unlink(missing_ok=True)
        raise
    finally:
        for path in [*temps.values(), *backups.values()]:
            path.unlink(missing_ok=True)


def _write_temp(target: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _make_backup(target: Path) -> Path:
    backup = backup_path(target)
    backup.unlink(missing_ok=True)  # a stale one from a killed save
    try:
        os.link(target, backup)  # no copy: the old file stays where it is until os.replace swaps it out
    except OSError:  # file systems without hard links
        shutil.copy2(target, backup)
    return backup


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows); the renames are done anyway
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover_backup(target: Path, expected_sha256: str) -> bytes | None:
    """The backup of `target` left by a save that was killed mid-way, if it matches the config's checksum."""
    backup = backup_path(target)
    if not backup.is_file():
        return None
    data = backup.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == expected_sha256 else None
