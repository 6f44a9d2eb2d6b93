"""Timing helpers shared by the benchmarks: wall-clock and CPU time of this process tree."""
from __future__ import annotations

import threading
import time

MB = 1024 * 1024


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


class MemoryPoller:
    """Peak RSS of this driver and of its Spark descendants, sampled from a background thread.

    The process tree is re-read every ``tree_every`` samples (workers are reused, so they live
    long); in between only the known processes' RSS is read, which is cheap.
    """

    def __init__(self, interval_s: float = 0.05, tree_every: int = 10, ranks: bool = False):
        import psutil

        self._psutil = psutil
        self.interval_s, self.tree_every, self.ranks = interval_s, tree_every, ranks
        self.me = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _classify(self) -> dict[int, tuple[str, object]]:
        """pid -> (role, Process) for the Spark JVM, the pyspark daemon and the Python workers."""
        found = []
        for p in self.me.children(recursive=True):
            try:
                found.append((p, " ".join(p.cmdline()), p.ppid(), p.name()))
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
        ranks = self.ranks
        jvms = {p.pid for p, cmd, _, _ in found if "org.apache.spark.deploy.SparkSubmit" in cmd}
        daemons = {p.pid for p, cmd, parent, _ in found if "pyspark.daemon" in cmd and parent in jvms}
        out = {}
        for p, cmd, parent, name in found:
            if p.pid in jvms:
                out[p.pid] = ("jvm", p)
            elif p.pid in daemons:
                out[p.pid] = ("daemon", p)
            elif parent in daemons or "pyspark.worker" in cmd or "pyspark/worker" in cmd \
                    or (parent in jvms and "python" in name) or (ranks and "python" in name):
                out[p.pid] = ("worker", p)  # with ranks: a training rank started by a worker too
        return out

    def _run(self) -> None:
        procs: dict[int, tuple[str, object]] = {}
        i = 0
        t0 = time.thread_time()
        while not self._stop.is_set():
            if i % self.tree_every == 0:
                procs = self._classify()
            i += 1
            self._sample(procs)
            self._stop.wait(self.interval_s)
        self._sample(self._classify())  # the state at the end, for the CPU time
        self.cpu_seconds = time.thread_time() - t0

    def _sample(self, procs: dict[int, tuple[str, object]]) -> None:
        self.samples += 1
        rss_sum = {"worker": 0, "daemon": 0, "jvm": 0}
        for pid, (role, p) in list(procs.items()):
            try:
                rss = p.memory_info().rss
                t = p.cpu_times()
            except self._psutil.NoSuchProcess:
                del procs[pid]
                continue
            self.per_pid[pid] = (role, max(self.per_pid.get(pid, (role, 0))[1], rss))
            rss_sum[role] += rss
            # Own CPU only (children_* would count a reaped child twice); from the first sample of
            # a process that was there at the start, from zero for one started since.
            self.cpu_last[pid] = t.user + t.system
            self.cpu_first.setdefault(pid, self.cpu_last[pid] if self.samples == 1 else 0.0)
        self.worker_sum = max(self.worker_sum, rss_sum["worker"])
        self.jvm_sum = max(self.jvm_sum, rss_sum["jvm"])
        driver = self.me.memory_info().rss
        self.driver_start = self.driver_start or driver
        self.driver = max(self.driver, driver)

    def __enter__(self) -> "MemoryPoller":
        self.per_pid: dict[int, tuple[str, int]] = {}
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        t = self.me.cpu_times()
        self.driver_cpu0 = t.user + t.system
        self.worker_sum = self.jvm_sum = self.driver = self.driver_start = self.samples = 0
        self.cpu_seconds = 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-poller", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def core_seconds(self) -> float:
        """CPU seconds of the driver and of the processes seen under it while polling (each one's
        own time, as last sampled: a process that lived less than a tree re-read is missed)."""
        t = self.me.cpu_times()
        return t.user + t.system - self.driver_cpu0 + sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last)

    def peaks(self) -> dict[str, float]:
        by_role: dict[str, list[int]] = {"worker": [], "daemon": [], "jvm": []}
        for role, rss in self.per_pid.values():
            by_role[role].append(rss)
        return {"workers": len(by_role["worker"]),
                "worker_mb": max(by_role["worker"], default=0) / MB,
                "worker_sum_mb": self.worker_sum / MB,
                "daemon_mb": max(by_role["daemon"], default=0) / MB,
                "jvm_mb": self.jvm_sum / MB,
                "driver_mb": self.driver / MB,
                "driver_growth_mb": (self.driver - self.driver_start) / MB,
                "samples": self.samples, "poller_cpu_s": self.cpu_seconds}
