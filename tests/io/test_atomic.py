"""io/atomic.py's whole-directory protocol and its one fsync helper (replace_files is covered through the adapter
saves in test_checkpoint.py)."""

from __future__ import annotations

import os

import pytest

from lorakit.io import atomic
from lorakit.io.atomic import atomic_directory, fsync, recover_directory


def test_atomic_directory_replaces_the_old_contents_in_one_rename(tmp_path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and not (tmp / "old.txt").exists()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.txt").write_text("new")
    assert sorted(p.name for p in target.rglob("*")) == ["new.txt", "sub"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or moved-aside folder left


def test_an_error_in_the_block_leaves_the_old_directory_whole(tmp_path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_kill_between_the_two_renames_is_recovered(tmp_path) -> None:
    target = tmp_path / "out"
    aside = tmp_path / ".old-out-12345"  # what a process killed after its first rename leaves
    aside.mkdir()
    (aside / "old.txt").write_text("old")
    recover_directory(target)
    assert (target / "old.txt").read_text() == "old" and not aside.exists()
    recover_directory(target)  # nothing to do once the target is there
    assert (target / "old.txt").read_text() == "old"


def test_the_next_write_recovers_first(tmp_path) -> None:
    target = tmp_path / "out"
    aside = tmp_path / ".old-out-12345"
    aside.mkdir()
    (aside / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target):
        raise RuntimeError("failed write")
    assert (target / "old.txt").read_text() == "old"


def test_every_file_is_flushed_before_the_rename(tmp_path, monkeypatch) -> None:
    flushed = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                         real(fd)))
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.bin").write_bytes(b"a")
    assert "/.tmp-out-" in flushed[0] and flushed[0].endswith("a.bin")  # the file, still in the temporary folder
    assert flushed[-1] == os.path.realpath(tmp_path)  # then the parent: the renames in it


def test_fsync_of_a_file_reports_errors_and_of_a_directory_does_not(tmp_path, monkeypatch) -> None:
    file = tmp_path / "f"
    file.write_bytes(b"x")
    fsync(file)
    fsync(tmp_path, directory=True)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        fsync(file)
    fsync(tmp_path, directory=True)  # best effort: the renames are done either way
    with pytest.raises(OSError, match="No space"), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.bin").write_bytes(b"a")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
