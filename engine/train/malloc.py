"""Keep freed memory in the process: what a training process asks of glibc's malloc before it trains.

By default glibc serves every block of 128 KB or more (the threshold adapts upwards, to 32 MB at most)
with its own mmap and gives it back to the kernel when it is freed. A training step frees and
allocates its activations again at every step (a 20-way batch's first conv output alone is ~60 MB),
so each step's memory came back as fresh pages the kernel had to fault in and zero: `python -m
engine train --preset omniglot` spent a fifth of its CPU time in the kernel (496 s system of 2,236 s,
/usr/bin/time) and 315 million page faults. With mmap off and the heap never trimmed, freed blocks
are reused from the process's heap: `bench profile` read 123-126 ms a step against 169-175 ms (0.32 of
the FP32 peak against 0.23-0.24), 0.1 million page faults against 3.7-4.1 million; the preset's whole
run took 12.9 min against 18.8, with the same numbers, and peaked at 1.28 GB resident against 1.14
(BENCHMARKS.md §1, §3). The memory a step needs stays held between steps, which is what a training
process wants, not a server.

keep_freed_memory() is called by `python -m engine` (every command) and by each of the app's
training processes (engine.train.worker), never by the Streamlit server. $CONCEPTSCAPE_KEEP_FREED_MEMORY=0
leaves malloc as it is (to compare). Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (glibc's malloc.h)
NEVER_TRIM = 2**31 - 1  # bytes of free memory at the heap's top before it is given back: mallopt's largest value


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap (no mmap) and keep freed memory (no trim); True if it took."""
    if not sys.platform.startswith("linux") or os.environ.get("CONCEPTSCAPE_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
