"""train/heap.py: with the fixed mmap threshold, freed activation-sized blocks leave the process's resident memory;
with glibc's dynamic threshold they stay (the QLoRA step peak this fixes: benchmarks/SCALE.md, part 1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lorakit.train.heap import fix_mmap_threshold

PROBE = """
import sys, torch
from lorakit.train.heap import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
temporary = torch.ones(5 * 2**20)
del temporary  # a 20 MiB temporary: glibc raises its threshold to 20 MiB when it is freed
before = rss()
blocks = [torch.ones(2**21) for _ in range(40)]  # 40 activations of 8 MiB
keep = blocks.pop()  # the last one stays alive, on top of the others in the heap
del blocks
print(rss() - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_freed_blocks_leave_resident_memory_only_with_the_fixed_threshold():
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "LORAKIT_MALLOC")}

    def retained(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    default, fixed = retained("default"), retained("fixed")
    assert default > 250  # 39 freed blocks of 8 MiB kept by the heap
    assert fixed < 40  # only the live one


def test_the_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not fix_mmap_threshold()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("LORAKIT_MALLOC", "default")
    assert not fix_mmap_threshold()
