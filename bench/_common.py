"""Helpers shared by the benches: in-process ComfyUI, tiny models, timing and peak-memory probes."""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")


def boot():
    """ComfyUI in this process with UltraRes + the test pack (the tests' harness)."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    from harness import boot as harness_boot

    return harness_boot.boot()


def tiny(family: str, seed: int = 0):
    boot()
    from harness import boot as harness_boot

    return harness_boot.tiny(family, seed)


def return_freed_memory_to_os() -> None:
    """Make glibc serve every allocation >= 64 KiB with mmap and unmap it on free, so RSS tracks
    live tensors (by default the mmap threshold grows after frees and freed blocks stay in the
    heap, which hides the next call's allocations)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory of this process above the level at start, sampled every 5 ms (CPU).
    On CUDA use torch.cuda.max_memory_allocated instead."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def timed_with_peak(fn, repeats: int, clock=time.perf_counter) -> tuple[float, float]:
    """(median seconds by ``clock``, peak RSS MiB above the start of a call) over ``repeats`` calls of
    ``fn`` under ``torch.inference_mode``, garbage collected before each."""
    import gc
    import statistics

    import torch

    times, peak = [], 0.0
    for _ in range(repeats):
        gc.collect()
        with PeakRSS() as mem, torch.inference_mode():
            start = clock()
            out = fn()
            times.append(clock() - start)
        del out
        peak = max(peak, mem.mib)
    return statistics.median(times), peak


@contextmanager
def timer():
    out = {}
    start = time.perf_counter()
    yield out
    out["s"] = time.perf_counter() - start
