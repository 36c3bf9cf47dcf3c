"""Crash-safe writes, one protocol: write aside, flush, rename into place; an error puts the old state back.

Two shapes of it:
  - `replace_files`: several files of a directory replaced as one unit. An adapter is two files (weights, then
    the config that carries the weights' checksum). Each new file is written to a temporary file first; the old
    one is kept as a hidden backup (a hard link) until the last rename is done. An exception at any point (disk
    full, Ctrl-C, a failing rename) puts the old files back and removes the temporary ones. A hard kill between
    the renames leaves new weights next to the old config: their checksums disagree, and `recover_backup` hands
    the loader the backup of the old weights, which does match.
  - `atomic_directory`: a whole directory (a training checkpoint, a command's output folder) written into a
    temporary directory beside it and renamed into place; the previous version is moved aside first and removed
    after. A hard kill between the two renames leaves only the moved-aside version: `recover_directory` (called
    by the next `atomic_directory` on that target, and by readers) puts it back.
Every file is flushed to disk (`fsync`) before it is renamed into place, and the parent directory after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
        fsync(directory, directory=True)
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
        fsync(Path(tmp))
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


def recover_backup(target: Path, expected_sha256: str) -> bytes | None:
    """The backup of `target` left by a save that was killed mid-way, if it matches the config's checksum."""
    backup = backup_path(target)
    if not backup.is_file():
        return None
    data = backup.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == expected_sha256 else None


# -- whole directories --------------------------------------------------------------------------------------------
@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` in one rename (old contents removed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                fsync(file)
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        fsync(target.parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(target: Path) -> None:
    """After a kill between the two renames of atomic_directory: put the previous version back."""
    if target.exists():
        return
    for old in sorted(target.parent.glob(f".old-{target.name}-*")):
        os.replace(old, target)
        return


# -- the one flush ------------------------------------------------------------------------------------------------
def fsync(path: Path, directory: bool = False) -> None:
    """Flush a file's contents, or a directory's entries (the renames in it), to disk.

    A file's flush must succeed (renamed in unflushed, it may be empty after a power cut): its errors propagate.
    A directory's is best effort: not every platform opens or syncs directories (Windows), and the renames are
    done either way."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)
