"""Python tasks that Spark schedules but that do their own I/O.

Preprocess runs its heavy work as ``spark.range(n, numPartitions=n).mapInPandas(body)``: Spark
gives each task a number (its row) and a Python worker, and the task reads its share of the
input and writes its output files itself, with pyarrow. Only small results go back through
Spark. Files are written under a hidden temporary name and renamed (``lake.ParquetPart``), so a
retried or speculative attempt replaces a file whole.
"""
from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession


def numbers(spark: SparkSession, n: int) -> DataFrame:
    """n partitions of one row each: the task numbers 0..n-1 (column ``id``)."""
    return spark.range(0, n, 1, n)


def each(frames: Iterator[pd.DataFrame]) -> Iterator[int]:
    """The task numbers a mapInPandas body over ``numbers`` receives."""
    for pdf in frames:
        yield from (int(t) for t in pdf["id"])


def attempt() -> int:
    """This task attempt's id (0 outside Spark), to name temporary files."""
    ctx = TaskContext.get()
    return ctx.taskAttemptId() if ctx else 0
