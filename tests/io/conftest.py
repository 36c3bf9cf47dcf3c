"""Fixtures of the adapter-file tests (helpers live in tests/io/support.py)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import token_ids


@pytest.fixture
def peft():
    """PEFT, the reference implementation of the file format (a test-only dependency)."""
    return pytest.importorskip("peft")  # lorakit's files carry no config key PEFT would warn about


@pytest.fixture
def ids() -> torch.Tensor:
    return token_ids()
