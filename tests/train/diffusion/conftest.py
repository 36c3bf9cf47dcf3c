"""Tiny diffusers pipelines (one per test session) and image folders for the text-to-image training tests."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from lorakit.diffusion.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "pipe")


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory):
    from lorakit.diffusion.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd-v") / "pipe", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    from lorakit.diffusion.tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "pipe")
