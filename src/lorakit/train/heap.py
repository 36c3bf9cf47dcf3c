"""QLoRA on CPU: stop glibc from keeping freed activations resident.

glibc's malloc serves blocks of at least its mmap threshold with mmap (given back to the OS when freed) and smaller
ones from its heap (kept). The threshold is dynamic: each freed mmapped block raises it to that block's size, up to
32 MiB, so after the first big temporary every activation and dequantized weight below 32 MiB comes from the heap,
and the heap's freed pieces stay resident. A QLoRA step on a 1.1B Llama (batch 1 x 512, checkpointing) peaked at
3.3 GiB with the default and 1.5 GiB with a fixed 128 KiB threshold (docs/qlora.md, Memory): for a method
whose point is memory, lorakit fixes it. MALLOC_MMAP_THRESHOLD_ in the environment (glibc's own setting) wins;
LORAKIT_MALLOC=default leaves glibc alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD = 128 * 1024  # glibc's initial default, made fixed


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold for this process; True if it was set (Linux with glibc, not overridden)."""
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ or os.environ.get("LORAKIT_MALLOC") == \
            "default":
        return False
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    return False
