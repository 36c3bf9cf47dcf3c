"""OS errors and broken base checkpoints: one line on stderr, a non-zero exit, no partial output."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import torch

from lorakit.cli.main import main
from lorakit.hf.tiny import make_tiny_model
from tests.cli.cli_helpers import adapter_on, disk_full_under, one_error_line
from tests.cli.test_inspect import saved_adapter


def base_and_adapter(tmp_path: Path) -> tuple[Path, Path]:
    base = make_tiny_model(tmp_path / "base", "llama")
    adapter_on(base, tmp_path / "adapter")
    return base, tmp_path / "adapter"


def test_merge_into_a_file(tmp_path, capsys):
    base, adapter = base_and_adapter(tmp_path)
    capsys.readouterr()  # set-up output (transformers' progress bars)
    (tmp_path / "afile").write_text("mine")
    for out in (tmp_path / "afile", tmp_path / "afile" / "merged"):  # OUT, or a folder above it, is a file
        assert main(["merge", str(base), str(adapter), str(out)]) != 0
        one_error_line(capsys)
    assert (tmp_path / "afile").read_text() == "mine"


def test_merge_into_a_read_only_folder(tmp_path, capsys, monkeypatch):
    base, adapter = base_and_adapter(tmp_path)
    capsys.readouterr()  # set-up output (transformers' progress bars)
    (tmp_path / "ro").mkdir()
    real_mkdtemp = tempfile.mkdtemp

    def read_only(*args, dir=None, **kwargs):  # root ignores chmod, so the file system's answer is simulated
        if dir is not None and Path(dir) == tmp_path / "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert main(["merge", str(base), str(adapter), str(tmp_path / "ro" / "merged")]) == 1
    err = one_error_line(capsys)
    assert "Read-only file system" in err and str(tmp_path / "ro") in err
    assert list((tmp_path / "ro").iterdir()) == []


def test_merge_where_nothing_may_be_written(tmp_path, capsys):
    base, adapter = base_and_adapter(tmp_path)
    capsys.readouterr()  # set-up output (transformers' progress bars)
    out = Path("/sys/lorakit-merge-test")  # sysfs takes no new folders, even from root
    assert main(["merge", str(base), str(adapter), str(out)]) == 1
    assert str(out.parent) in one_error_line(capsys)
    assert not out.exists()


def test_inspect_plot_on_a_full_disk_keeps_the_old_plot(tmp_path, capsys, monkeypatch):
    _, adapter = saved_adapter(tmp_path)
    capsys.readouterr()  # set-up output (transformers' progress bars)
    (tmp_path / "plots").mkdir()
    plot = tmp_path / "plots" / "s.png"
    plot.write_bytes(b"an older plot")
    disk_full_under(monkeypatch, tmp_path / "plots")
    assert main(["inspect", str(adapter), "--plot", str(plot)]) == 1
    assert "No space left on device" in one_error_line(capsys, "inspect")
    assert plot.read_bytes() == b"an older plot"
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["s.png"]  # no half-written temporary file


def test_a_truncated_base_safetensors(tmp_path, capsys):
    base, adapter = base_and_adapter(tmp_path)
    capsys.readouterr()  # set-up output (transformers' progress bars)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    assert main(["merge", str(base), str(adapter), str(tmp_path / "merged")]) == 2
    assert "corrupt or truncated" in one_error_line(capsys)
    assert not (tmp_path / "merged").exists()


class _Unsafe:
    def __reduce__(self):  # a harmless call, but one that weights_only loading must refuse
        return (os.getcwd, ())


def test_a_base_pickle_refused_by_weights_only(tmp_path, capsys):
    base, adapter = base_and_adapter(tmp_path)
    capsys.readouterr()  # set-up output (transformers' progress bars)
    (base / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _Unsafe()}, base / "pytorch_model.bin")
    assert main(["merge", str(base), str(adapter), str(tmp_path / "merged")]) == 2
    assert "pickle weights file that a safe load refuses" in one_error_line(capsys)
    assert not (tmp_path / "merged").exists()
