"""Timing and peak-memory measurement shared by the benchmarks (not part of the library).

CPU: torch's allocations are invisible to tracemalloc, so peak memory is the peak resident set size
above the level before the call, sampled by a background thread every millisecond. CUDA:
``torch.cuda.max_memory_allocated`` above the allocation before the call.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil
import torch


@dataclass
class Measurement:
    min_s: float
    median_s: float
    peak_bytes: int

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


class _RssPeak:
    """Samples this process's RSS in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval_s: float = 0.001):
        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Extra bytes ``fn`` needs at its peak, above what was allocated before it ran."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = psutil.Process().memory_info().rss
    with _RssPeak() as sampler:
        fn()
    return max(0, sampler.peak - before)


def measure_interleaved(
    fns: dict[str, Callable[[], None]], device: torch.device, repeats: int = 5, warmup: int = 1
) -> dict[str, Measurement]:
    """Min and median wall time of each function over ``repeats`` rounds (after ``warmup``), and its peak memory.

    Within a round the functions run in turn, so a busy machine slows them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for step in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return {
        name: Measurement(min(times[name]), statistics.median(times[name]), peak_memory(fn, device))
        for name, fn in fns.items()
    }


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
