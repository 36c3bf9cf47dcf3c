"""Shared pytest set-up: every test starts from the same random state (tiny models live in tests/helpers.py)."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
# the tokenized-data cache (lorakit/train/token_cache.py) of this test session, not the user's
os.environ["LORAKIT_CACHE"] = tempfile.mkdtemp(prefix="lorakit-test-cache-")
# Tiny models: thread start-up costs more than it saves, and one thread keeps results identical run to run
# (a loaded 2-core machine ran a tiny Llama forward in 1.1 s with 2 threads, 1 ms with 1).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (lorakit.assets). Set-up fetches it (scripts/setup-env.sh); a
    missing file fails the test, with the command that fetches it, rather than skipping it unseen."""
    from lorakit.assets import asset_path
    from lorakit.errors import ConfigError

    try:
        return asset_path("smollm2")
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
