"""Give the memory freed by a batch back to the system (glibc's ``malloc_trim``).

glibc serves freed blocks below its mmap threshold (which it raises up to 32 MiB as large blocks
are freed) from a heap that fragments and rarely shrinks: the activations and logits of each batch
leave free pages the process keeps. Scoring Llama-3.2-1B's shape with its 128k vocabulary in one
process (``bench/memory.py --shape llama1b``'s pool) peaked at 3.51 and 3.60 GiB without trimming
and 2.91 GiB with it, at the same CPU time (41.5 against 40.8 and 41.2 CPU-s); whole ``tunewise
score`` runs still vary between 3.05 and 3.57 GiB (BENCHMARKS.md, "Real models at their real
size"). Pinning the mmap threshold instead gave a steady 2.92 GiB but cost 13–20 % CPU time.
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
