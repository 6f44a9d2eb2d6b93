"""Python tasks that Spark schedules but that do their own I/O.

Preprocess runs its heavy work as ``spark.range(n, numPartitions=n).mapInPandas(body)``: Spark
gives each task a number (its row) and a Python worker, and the task reads its share of the
input and writes its output files itself, with pyarrow. Only small results go back through
Spark. Files are written under a hidden temporary name and renamed (``lake.ParquetPart``), so a
retried or speculative attempt replaces a file whole.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession

from pipeline.core import lake


def numbers(spark: SparkSession, n: int) -> DataFrame:
    """n partitions of one row each: the task numbers 0..n-1 (column ``id``)."""
    return spark.range(0, n, 1, n)


def num_tasks(spark: SparkSession, files_per_split: int) -> int:
    """files_per_split, or the smallest multiple of it that gives every core a task."""
    return files_per_split * max(1, math.ceil(spark.sparkContext.defaultParallelism / files_per_split))


def each(frames: Iterable[pd.DataFrame]) -> Iterator[int]:
    """The task numbers a mapInPandas body over ``numbers`` receives."""
    for pdf in frames:
        yield from (int(t) for t in pdf["id"])


def to_spark(frame: pd.DataFrame) -> pd.DataFrame:
    """What a mapInPandas body yields, with its string columns as plain object columns.

    pandas 3 keeps strings in pyarrow-backed arrays by default, and PySpark 4.1's Arrow
    serializer takes them as ChunkedArrays that it cannot assemble into a batch ("Expected Array,
    got ChunkedArray"). It casts a float column meant for a string field through the same
    arrays, which an empty frame (float64 columns by default) runs into. Object columns convert
    the same way under pandas 2 and 3; missing values (None or NaN) become nulls either way.
    """
    for c in frame.columns:
        if frame[c].dtype != object and (not len(frame) or pd.api.types.is_string_dtype(frame[c].dtype)):
            frame[c] = frame[c].astype(object)
    return frame


def attempt() -> int:
    """This task attempt's id (0 outside Spark), to name temporary files."""
    ctx = TaskContext.get()
    return ctx.taskAttemptId() if ctx else 0


def partition() -> int:
    """This Spark task's partition (an error outside a Spark task)."""
    ctx = TaskContext.get()
    if ctx is None:
        raise RuntimeError("not in a Spark task: no partition")
    return ctx.partitionId()


def write_plans(plans: list[pa.Table], plan_uri: str) -> None:
    """Each task's share of the input as ``<plan_uri>/part-<task>.parquet``: a task reads only its
    own, where a plan in the task closure would be shipped whole to every task."""
    for t, table in enumerate(plans):
        part = lake.ParquetPart(f"{plan_uri}/part-{t:05d}.parquet", table.schema, 1 << 62)
        part.write(table)
        part.close()


def read_plan(plan_uri: str, task: int) -> pd.DataFrame:
    with fsspec.open(f"{plan_uri}/part-{task:05d}.parquet", "rb") as f:
        return pq.read_table(f).to_pandas()
