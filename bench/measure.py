"""Timing helpers shared by the benchmarks: wall-clock and CPU time of this process tree."""
from __future__ import annotations

import time


def cpu_seconds() -> float:
    """CPU time of this process and every live descendant (JVM, Python workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()  # children_*: descendants that exited and were waited for
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def timed(fn):
    """(wall seconds, CPU seconds of the process tree, fn's result)."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, cpu_seconds() - cpu0, out
