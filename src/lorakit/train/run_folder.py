"""The output folder of a training run: looked at before anything is written, put back when a start fails, and
never left mixing two runs.

The life of a run's folder (only the main process writes):

  check()      reads only. Refuses a path that is a file, and a folder that already holds a run unless the run is
               resumed or output.overwrite is set. Also repairs what a killed run left (see below).
  open()       the first write, after every start-up check has passed: creates the folder, moves an old run aside
               (overwrite), writes train_config.yaml. Later writes of the start call track() first.
  clean_leftovers()  once the start has succeeded: the temporary files of saves that kills interrupted.
  commit()     the new run has saved something of its own (a checkpoint, best/ or the adapter): the old run it
               replaces is deleted.
  rollback()   the start failed, or the run failed before commit(): what this run wrote is removed, the old run
               moved back, and folders this run created are removed. The folder is as the run found it.

Why "move the old run aside" rather than "write the new run somewhere else and swap at the end": the new run's
checkpoints live where `--resume` looks for them from the first one on, so an overwriting run that is killed
later resumes like any other. The old run waits in <dir>/.replaced-run/ (same file system: every move is a
rename). A run killed before its first save cannot roll back itself; the next start in the folder finds the
stash and puts the old run back first (`repair`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.train.state import recover
from lorakit.variants.training import run_files

CONFIG_FILE = "train_config.yaml"
STASH = ".replaced-run"
CHECKPOINTS = "checkpoints"
# what a run writes at the top of its folder (besides the adapter: adapter_* files, or <dir>/<adapter_name>/)
RUN_ENTRIES = (CONFIG_FILE, "metrics.jsonl", "summary.json", "curves.png", CHECKPOINTS, "best",
               "tensorboard", "pytorch_lora_weights.safetensors", "samples")  # the last two: text-to-image runs
RUN_PATTERNS = ("adapter_*", "lorakit_*")  # the adapter's files and any sidecar of lorakit's next to them
# temporary files of a save that was killed half-way (the rename that would have ended it never came)
LEFTOVER_PATTERNS = (".tmp-*", ".adapter_*.tmp", ".lorakit_*.tmp", "metrics.tmp")


class OutputDirError(LorakitError):
    """output.dir cannot hold this run: a file, a folder holding another run, or a write the system refused."""


def describe_os_error(exc: OSError, out: Path, later: str = "") -> str:
    """One line for an OSError met while writing the run (disk full, read-only folder, ...)."""
    where = exc.filename or out
    what = exc.strerror or str(exc)
    hints = {errno.ENOSPC: "free some disk space or choose another output.dir",
             errno.EDQUOT: "free some disk space or choose another output.dir",
             errno.EROFS: "the file system is read-only; choose a writable output.dir",
             errno.EACCES: "choose an output.dir you can write to",
             errno.EPERM: "choose an output.dir you can write to",
             errno.ENOTDIR: "a part of output.dir is a file; choose another output.dir"}
    hint = hints.get(exc.errno or 0, "check output.dir")
    return f"could not write the training run to {where}: {what} (errno {exc.errno}); {hint}{later}"


class RunFolder:
    def __init__(self, out: Path, adapter_name: str = "default") -> None:
        self.out = Path(out)
        self.adapter_name = adapter_name
        self.created: list[Path] = []  # folders open() made, innermost last
        # top-level entries this run writes -> what was there before: the old bytes of a file, True for a folder
        # that existed, None for nothing (rollback puts each back)
        self.before: dict[str, bytes | bool | None] = {}
        self.stashed = False
        self.committed = False

    # -- reading --------------------------------------------------------------------------------------------------
    def entries(self) -> list[Path]:
        """The run's top-level entries present in the folder (not the stash, not other files)."""
        if not self.out.is_dir():
            return []
        names = set(RUN_ENTRIES) | set(run_files()) | ({self.adapter_name} if self.adapter_name != "default" else set())
        found = {p for p in self.out.iterdir() if p.name in names}
        for pattern in RUN_PATTERNS:
            found.update(self.out.glob(pattern))
        return sorted(found)

    def holds_run(self) -> bool:
        return (self.out / CONFIG_FILE).exists() or (self.out / CHECKPOINTS).exists()

    def check(self, resume: bool, overwrite: bool, repair: bool = True) -> None:
        """Refuse, before anything is written, a start this folder cannot take. `repair`: on the main process."""
        if self.out.exists() and not self.out.is_dir():
            raise OutputDirError(f"output.dir={str(self.out)!r} is a file, not a folder; choose another output.dir "
                                 "(or move the file away)")
        if repair:
            self.repair()
        if self.holds_run() and not resume and not overwrite:
            raise OutputDirError(
                f"output.dir={str(self.out)!r} already holds a training run; pass --resume to continue it, "
                "output.overwrite=true to start over, or choose another output.dir"
            )

    def repair(self) -> None:
        """A run that replaced an old one and was killed before its first save: put the old run back."""
        stash = self.out / STASH
        if not stash.is_dir():
            return
        for entry in self.entries():
            _remove(entry)
        for entry in stash.iterdir():
            os.replace(entry, self.out / entry.name)
        stash.rmdir()

    # -- writing --------------------------------------------------------------------------------------------------
    def open(self, config_yaml: str, fresh: bool) -> None:
        """The run's first writes. `fresh`: a new run (an old one, if any, is moved aside); else a resumed run."""
        try:
            self._make_folder()
            if fresh and self.entries():
                stash = self.out / STASH
                stash.mkdir()
                self.stashed = True
                for entry in self.entries():
                    os.replace(entry, stash / entry.name)
            self.track(CONFIG_FILE)
            _write_atomic(self.out / CONFIG_FILE, config_yaml)
        except OSError as exc:
            self.rollback()
            raise OutputDirError(describe_os_error(exc, self.out)) from None
        except BaseException:
            self.rollback()
            raise

    def _make_folder(self) -> None:
        missing = []
        path = self.out
        while not path.exists() and path != path.parent:
            missing.append(path)
            path = path.parent
        for folder in reversed(missing):
            folder.mkdir()
            self.created.append(folder)

    def clean_leftovers(self) -> None:
        """Temporary files and folders of saves that a kill interrupted (here, in best/ and in checkpoints/)."""
        recover(self.out / "best")  # killed between the two renames of atomic_directory: the old best/ comes back
        for folder in (self.out, self.out / "best", self.out / CHECKPOINTS):
            if not folder.is_dir():
                continue
            for pattern in (*LEFTOVER_PATTERNS, ".old-*"):
                for leftover in folder.glob(pattern):
                    _remove(leftover)

    def track(self, name: str) -> None:
        """Call before the run first writes the top-level entry `name`: rollback puts back what was there."""
        if name in self.before:
            return
        path = self.out / name
        self.before[name] = path.read_bytes() if path.is_file() else True if path.exists() else None

    def commit(self) -> None:
        """The new run saved something: from now on the folder is the new run; the old one goes."""
        if self.committed:
            return
        self.committed = True
        if self.stashed:
            shutil.rmtree(self.out / STASH, ignore_errors=True)
            self.stashed = False

    def rollback(self) -> None:
        """Undo open() and everything the run wrote since (only before commit)."""
        if self.committed:
            return
        if self.stashed:  # a fresh run over an old one: all the run entries now in the folder are the new run's
            for entry in self.entries():
                _remove(entry)
            self.repair()
            self.stashed = False
        else:
            for name, old in self.before.items():
                path = self.out / name
                if old is None:
                    _remove(path)
                elif isinstance(old, bytes):
                    _write_atomic(path, old)
        self.before.clear()
        for folder in reversed(self.created):
            try:
                folder.rmdir()  # only if still empty: never removes what someone else put there
            except OSError:
                break
        self.created.clear()


def _write_atomic(path: Path, data: str | bytes) -> None:
    tmp = path.parent / f".tmp-{path.name}"
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
