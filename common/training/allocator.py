"""Keep freed tensor memory inside the process during DP-SGD instead of handing it back to the OS.

An Opacus step allocates and frees per-sample gradients of the tied item table (B x 3,417 x 64,
~56 MB at B = 64) several times. glibc serves blocks that large with mmap and unmaps them on free,
so the next step page-faults the same memory back in, zero-filled (23% of a SASRec DP step was
`fill_` in a profile). Raising glibc's mmap and trim thresholds keeps the memory in the heap for
reuse, as PyTorch's CUDA caching allocator does on GPUs: DP steps got ~15% faster on a quiet CPU
and ~30% faster on a loaded one. Non-private steps got ~10% slower with it (single thread; fresh
mmap pages come zeroed for free), so only DP training turns it on (BENCHMARKS.md), and the cohort
engine, whose every chunk frees and re-allocates (positions x items) scores: its chunks took ~25%
less CPU time with it (simulations/benchmarks/federation/bench_cohort_compute.py, NOTES-ghost.md). The heap is
handed back (`release_freed_memory`) after each pass over the data, so a long-lived process (a
simulation worker) does not keep growing between passes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
RETAIN_LIMIT = 1 << 30  # blocks above 1 GiB still go to mmap and back to the OS on free


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim  # noqa: B018 - musl and other libcs have neither
        return libc
    except (OSError, AttributeError):
        return None


@functools.cache
def retain_freed_memory() -> bool:
    """Tune glibc malloc once per process (DP-SGD only); False where it does not apply (not glibc,
    or turned off with FEDSEQREC_RETAIN_MEMORY=0)."""
    if os.environ.get("FEDSEQREC_RETAIN_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    libc = _glibc()
    return (
        libc is not None
        and bool(libc.mallopt(M_MMAP_THRESHOLD, RETAIN_LIMIT))
        and bool(libc.mallopt(M_TRIM_THRESHOLD, RETAIN_LIMIT))
    )


def retaining() -> bool:
    """Whether this process has turned retention on; asking never turns it on."""
    return retain_freed_memory.cache_info().currsize > 0 and retain_freed_memory()


def release_freed_memory() -> None:
    """Return free heap memory to the OS (after an epoch, not a step: one re-fault per pass). Does
    nothing in a process that never turned retention on: non-private training keeps glibc's defaults."""
    if retaining():
        _glibc().malloc_trim(0)
