"""The benchmarks' process-tree memory: RSS counts a shared page in every process, PSS once."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.benchmarks.federation.bench_federation import PeakMemory

MB = 2**20
ROOT = Path(__file__).resolve().parents[2]


def _hold(buffer: bytearray, ready, done) -> None:
    sum(buffer[::4096])  # read every page: resident in this child, still shared with the parent
    ready.set()
    done.wait(30)


def test_forked_children_sharing_pages_count_once_in_pss_and_in_every_rss():
    size = 64 * MB
    buffer = bytearray(b"\x01") * size  # touched, so resident in the parent
    context = mp.get_context("fork")
    done = context.Event()
    children = []
    try:
        for _ in range(2):
            ready = context.Event()
            child = context.Process(target=_hold, args=(buffer, ready, done))
            child.start()
            children.append(child)
            assert ready.wait(30), "a child did not start"
        memory = PeakMemory()
        memory.sample()
    finally:
        done.set()
        for child in children:
            child.join(30)
    # Three processes map the 64 MB: the RSS sum holds it three times, the PSS sum about once.
    assert memory.peak >= 3 * size
    assert memory.peak - memory.peak_pss >= 1.5 * size
    assert memory.peak_pss >= size
    report = memory.report()
    assert report["peak_rss_mb_tree"] == pytest.approx(memory.peak / MB)
    shown = report["pss_mb_by_process_at_peak"]  # each rounded to 0.1 MB
    assert sum(shown.values()) == pytest.approx(memory.peak_pss / MB, abs=0.05 * len(shown) + 0.01)
    # Without the measuring process: the two children's shares, about two thirds of the buffer
    assert size / 2 <= memory.peak_pss_job < memory.peak_pss - size / 4
    assert report["peak_pss_mb_job"] == pytest.approx(memory.peak_pss_job / MB)


# Run where nothing else moves: a test worker's own children (its Ray head) come and go between samples.
_PEAK_CHECK = """
from simulations.benchmarks.federation.bench_federation import PeakMemory
MB = 2**20
memory = PeakMemory()
memory.sample()
first = memory.peak_pss
buffer = bytearray(b"\\x01") * (32 * MB)
memory.sample()
grown = memory.peak_pss
del buffer
memory.sample()  # smaller now: the peak stays
print(first, grown, memory.peak_pss)
"""


def test_the_peaks_keep_the_largest_sample():
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_CHECK], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True
    )
    first, grown, kept = (int(v) for v in result.stdout.split())
    assert grown >= first + 16 * MB
    assert kept >= grown  # the peak never falls
