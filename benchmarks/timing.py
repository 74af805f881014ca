"""The timing loop the benchmark scripts share (imported as ``timing``: each script's folder is on ``sys.path``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def measure(fn: Callable[[], object], iters: int, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of ``fn``: wall times and process-CPU times, one mean over ``iters`` calls per repeat.

    With one thread the CPU time is the work of one call, i.e. the latency an otherwise idle core would give; the wall
    time also counts the time other processes hold the core.
    """
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(iters):
            fn()
        walls.append((time.perf_counter() - wall) / iters)
        cpus.append((time.process_time() - cpu) / iters)
    return walls, cpus
