"""Fixtures of the adapter-file tests (helpers live in tests/io/support.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.helpers import token_ids


@pytest.fixture
def peft():
    """PEFT, the reference implementation of the file format (a test-only dependency)."""
    module = pytest.importorskip("peft")
    warnings.filterwarnings("ignore", message=".*Unexpected keyword arguments.*")  # PEFT on lorakit's extra keys
    return module


@pytest.fixture
def ids() -> torch.Tensor:
    return token_ids()
