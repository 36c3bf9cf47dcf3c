"""benchmarks.harness.interleave: every contender timed each round, and its minor page faults counted per call."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from benchmarks.harness import interleave

FRESH_MB = 64  # above glibc's largest mmap threshold (32 MiB): every call maps, and so faults, fresh pages
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def page_bytes() -> int:
    """4 KiB, or 2 MiB where the kernel backs every large mapping with huge pages (THP 'always')."""
    always = THP.exists() and "[always]" in THP.read_text()
    return 2 << 20 if always else 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux counts minor faults per page")
def test_interleave_counts_the_fresh_pages_each_call_touches() -> None:
    fresh = lambda: torch.ones(FRESH_MB << 18)  # noqa: E731  (4-byte floats: FRESH_MB MiB, written once)
    kept = torch.ones(FRESH_MB << 18)
    reuse = lambda: kept.fill_(2.0)  # noqa: E731  (the same pages every call: mapped already)
    samples = interleave({"fresh": fresh, "reuse": reuse}, rounds=3)
    pages = (FRESH_MB << 20) // page_bytes()
    assert len(samples.times["fresh"]) == len(samples.faults["fresh"]) == 3
    assert samples.median_faults("fresh") >= 0.9 * pages
    assert samples.median_faults("reuse") < 0.1 * pages
