"""Fair side-by-side timing: interleaved windows, each with the CPU time other processes took meanwhile.

On a 2-core CPU, another process holding a core slows PyTorch (2 threads) 10-25x and XLA about 2x, so a ratio
taken under load means nothing. ``timed_window`` measures a window's wall time and how many cores other processes
kept busy during it (from /proc/stat, minus this process's own CPU time); windows above ``MAX_OTHER_CORES`` are
discarded by the callers and counted. Callers also rotate the order of their windows each round and let the
machine settle for ``SETTLE_SECONDS`` before each window: right after a PyTorch window, XLA's next window ran up to
50% slower (and the other way round), which a fixed order charges to one side.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

SETTLE_SECONDS = 0.5  # idle time before each window
MAX_OTHER_CORES = 0.10  # a window during which other processes used more than a tenth of a core is noisy
_TICKS = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float | None:
    """CPU seconds all processes have been busy (user, nice, system, irq, softirq, steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_window(run: Callable[[], None]) -> tuple[float, float]:
    """Runs ``run()``; returns (wall seconds, cores other processes kept busy meanwhile; NaN off Linux)."""
    busy, own, start = _busy_seconds(), _own_seconds(), time.perf_counter()
    run()
    wall = time.perf_counter() - start
    after = _busy_seconds()
    if busy is None or after is None:
        return wall, float("nan")
    return wall, max(0.0, (after - busy) - (_own_seconds() - own)) / wall


def timed_calls(fn: Callable[[], object], min_window: float) -> tuple[float, float]:
    """Calls ``fn`` repeatedly for at least ``min_window`` seconds; returns (seconds per call, cores other
    processes kept busy meanwhile; NaN off Linux)."""
    calls = [0]

    def run():
        start = time.perf_counter()
        while not calls[0] or time.perf_counter() - start < min_window:
            fn()
            calls[0] += 1

    wall, other = timed_window(run)
    return wall / calls[0], other
