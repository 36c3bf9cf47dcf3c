"""OS errors around a run's folder through `lorakit train`: one line, a non-zero exit, no partial files, the old
run intact. Faults are injected (as root, chmod does not make a folder read-only)."""

from __future__ import annotations

import errno
import os

import pytest

import lorakit.train.state
from lorakit.cli.main import main
from tests.train.folder_helpers import disk_full, fail_writes_under, one_line_error, snapshot
from tests.train.runs import make_run


def temporary_files(folder) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_output_dir_that_is_a_file(tmp_path, capsys):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    target = tmp_path / "afile"
    target.write_text("keep me")
    capsys.readouterr()
    assert main(["train", str(config), f"output.dir={target}"]) != 0
    assert "is a file, not a folder" in one_line_error(capsys)
    assert target.read_text() == "keep me"


def test_a_read_only_parent_folder(tmp_path, monkeypatch, capsys):
    config = make_run(tmp_path, "causal", training={"max_steps": 1})
    parent = tmp_path / "readonly"
    parent.mkdir()
    capsys.readouterr()
    fail_writes_under(monkeypatch, parent, errno.EROFS)
    assert main(["train", str(config), f"output.dir={parent / 'run'}"]) != 0
    assert "Read-only file system" in one_line_error(capsys)
    monkeypatch.undo()
    assert list(parent.iterdir()) == []


def test_resuming_in_a_read_only_folder_changes_nothing(tmp_path, monkeypatch, capsys):
    config = make_run(tmp_path, "causal", training={"max_steps": 2, "save_every": 2})
    assert main(["train", str(config)]) == 0
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    fail_writes_under(monkeypatch, tmp_path / "out", errno.EROFS)
    assert main(["train", str(config), "training.max_steps=4", "--resume"]) != 0
    assert "Read-only file system" in one_line_error(capsys)
    monkeypatch.undo()
    assert snapshot(tmp_path / "out") == before


def half_written_save_file(tensors, filename, *args, **kwargs):
    with open(filename, "wb") as handle:  # the disk fills up half-way through the file
        handle.write(b"\0" * 64)
    disk_full()


def test_a_full_disk_while_writing_a_checkpoint(tmp_path, monkeypatch, capsys):
    config = make_run(tmp_path, "causal", training={"max_steps": 4, "save_every": 2})
    capsys.readouterr()
    monkeypatch.setattr(lorakit.train.state, "save_file", half_written_save_file)
    assert main(["train", str(config)]) != 0
    err = one_line_error(capsys)
    assert "No space left on device" in err and "free some disk space" in err
    out = tmp_path / "out"
    assert temporary_files(out) == [] and not (out / "checkpoints" / "step-00000002").exists()


def test_a_full_disk_in_a_resumed_run_keeps_the_saved_run(tmp_path, monkeypatch, capsys):
    config = make_run(tmp_path, "causal", training={"max_steps": 2, "save_every": 2, "eval_every": 2})
    assert main(["train", str(config)]) == 0
    out = tmp_path / "out"
    saved = {k: v for k, v in snapshot(out).items() if k.startswith(("adapter_", "best", "checkpoints"))}
    capsys.readouterr()
    monkeypatch.setattr(os, "fsync", disk_full)  # every save flushes its files before renaming them into place
    assert main(["train", str(config), "training.max_steps=4", "--resume"]) != 0
    assert "No space left on device" in one_line_error(capsys)
    monkeypatch.undo()
    assert {k: v for k, v in snapshot(out).items() if k.startswith(("adapter_", "best", "checkpoints"))} == saved
    assert temporary_files(out) == []


@pytest.mark.parametrize("where", ["checkpoint", "final adapter"])
def test_a_full_disk_in_an_overwriting_run_keeps_the_old_run(tmp_path, monkeypatch, capsys, where):
    config = make_run(tmp_path, "causal", training={"max_steps": 2})
    assert main(["train", str(config)]) == 0
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    if where == "checkpoint":
        monkeypatch.setattr(lorakit.train.state, "save_file", half_written_save_file)
    else:
        monkeypatch.setattr(os, "fsync", disk_full)
    extra = ["training.save_every=1"] if where == "checkpoint" else []
    assert main(["train", str(config), "output.overwrite=true", *extra]) != 0
    assert "the previous run in" in one_line_error(capsys)
    monkeypatch.undo()
    assert snapshot(tmp_path / "out") == before
