"""What a job cost: wall time, CPU-seconds, peak memory and GPU-seconds.

``Meter(spark)`` is started when a job starts and read with ``stop()`` when it ends; the figures
go into the job's manifest and its MLflow run (README, "What a job cost"):

    wall_s                 elapsed time of the job
    driver_cpu_s           user + system CPU of the driver's Python process
    executor_task_cpu_s    Spark's task metric executorCpuTime summed over the job's stages: CPU
                           of the executors' task threads (JVM). Work done in Python workers
                           (pandas UDFs, Horovod ranks) is not in it; see executor_task_run_s.
    executor_task_run_s    Spark's task metric executorRunTime summed: the seconds a task held a
                           core, Python work included; the figure to size a cluster with
    driver_peak_rss_mb     peak resident memory of the driver's Python process
    executor_peak_jvm_heap_mb  largest JVM heap an executor (or the local driver) reported
    gpu_s                  GPU-seconds: task run time x spark.task.resource.gpu.amount, or what the
                           caller measured (the training ranks that ran on a GPU)

Training adds ``rank_cpu_s`` and ``rank_peak_rss_mb`` when the ranks report them.
"""
from __future__ import annotations

import logging
import resource
import time
from typing import Any

log = logging.getLogger(__name__)


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stages(spark) -> list[Any]:
    """Spark's own per-stage task metrics (AppStatusStore, the data behind the UI and its REST API;
    kept with spark.ui.enabled=false too)."""
    sc = spark.sparkContext
    jvm = sc._jvm
    store = sc._jsc.sc().statusStore()
    stages = store.stageList(None, False, False, sc._gateway.new_array(jvm.double, 0),
                             jvm.java.util.Collections.emptyList())
    it, out = stages.iterator(), []
    while it.hasNext():
        out.append(it.next())
    return out


def _last_stage_id(spark) -> int:
    try:
        return max((s.stageId() for s in _stages(spark)), default=-1)
    except Exception as e:  # noqa: BLE001 - cost is reported, never a reason to fail a job
        log.warning("Spark task metrics unavailable: %s", e)
        return -1


def _executor_peak_heap_mb(spark) -> float | None:
    it = spark.sparkContext._jsc.sc().statusStore().executorList(False).iterator()
    peak = None
    while it.hasNext():
        m = it.next().peakMemoryMetrics()
        if m.isDefined():
            v = m.get().getMetricValue("JVMHeapMemory") / 2**20
            peak = v if peak is None else max(peak, v)
    return peak


class Meter:
    """Measures one job from construction to ``stop()``."""

    def __init__(self, spark=None):
        self.spark = spark
        self.t0 = time.perf_counter()
        self.cpu0 = _cpu_self()
        self.first_stage = _last_stage_id(spark) + 1 if spark is not None else 0

    def stop(self, gpu_s: float | None = None, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wall_s": round(time.perf_counter() - self.t0, 3),
            "driver_cpu_s": round(_cpu_self() - self.cpu0, 3),
            "executor_task_cpu_s": 0.0,
            "executor_task_run_s": 0.0,
            "driver_peak_rss_mb": round(peak_rss_mb(), 1),
            "executor_peak_jvm_heap_mb": None,
            "gpu_s": 0.0,
        }
        if self.spark is not None:
            try:
                stages = [s for s in _stages(self.spark) if s.stageId() >= self.first_stage]
                out["executor_task_cpu_s"] = round(sum(s.executorCpuTime() for s in stages) / 1e9, 3)
                out["executor_task_run_s"] = round(sum(s.executorRunTime() for s in stages) / 1e3, 3)
                heap = _executor_peak_heap_mb(self.spark)
                out["executor_peak_jvm_heap_mb"] = round(heap, 1) if heap is not None else None
                gpus = float(self.spark.sparkContext.getConf().get("spark.task.resource.gpu.amount", "0"))
                out["gpu_s"] = round(out["executor_task_run_s"] * gpus, 3)
            except Exception as e:  # noqa: BLE001
                log.warning("Spark task metrics unavailable: %s", e)
        if ranks:
            if all("cpu_s" in r for r in ranks):
                out["rank_cpu_s"] = round(sum(r["cpu_s"] for r in ranks), 3)
            if all("peak_rss_mb" in r for r in ranks):
                out["rank_peak_rss_mb"] = round(max(r["peak_rss_mb"] for r in ranks), 1)
        if gpu_s is not None:
            out["gpu_s"] = round(gpu_s, 3)
        return out


def core_hours_per_1k(cost: dict[str, Any], records: int) -> float | None:
    """Core-hours per 1,000 records: the cores the job held (Spark task run time plus the driver's
    CPU, which is where training runs under the local launcher) over the records it took in."""
    if not records:
        return None
    core_s = cost["executor_task_run_s"] + cost["driver_cpu_s"]
    return core_s / 3600.0 / (records / 1000.0)
