"""Wall-clock timing shared by the kernel benchmarks."""
from __future__ import annotations

import statistics
import time


def median_seconds(fn, iters: int) -> float:
    """Median wall time of `iters` calls of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
