"""Give the memory freed by a batch back to the system (glibc's ``malloc_trim``).

glibc serves freed blocks below its mmap threshold (which it raises up to 32 MiB as large blocks
are freed) from a heap that fragments and rarely shrinks: activations and logits of a few MiB per
batch leave free pages the process keeps. Scoring a 1B model with a 128k vocabulary
(``bench/memory.py --shape llama1b``) peaked at 1.53× its bf16 weights; trimming after every batch
brings it to 1.26×, at no measured cost in CPU time (41.5 against 40.8–41.2 CPU-s), where fixing
the mmap threshold instead cost 16 % (BENCHMARKS.md, "Real models at their real size").
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries have no libc.so.6
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    """Return the C heap's free pages to the system; a no-op off glibc (musl, macOS, Windows)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
