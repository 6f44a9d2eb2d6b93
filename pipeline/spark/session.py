"""The one place a SparkSession is built."""
from __future__ import annotations

import os
import warnings

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from pipeline.core.config import Config


# Defaults the jobs are tuned for; a value from spark-submit --conf, spark-defaults.conf or
# config spark.conf wins.
DEFAULTS = {
    # Arrow batches feed the pandas UDFs; keep them modest so worker memory stays flat.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "1024",
    # Spark's file sources (tables, and CSV/JSON/Parquet read through spark.read) pack files into
    # tasks as if opening each cost this many bytes (4 MB by default), so many small parts make
    # many tasks, each paying scheduling and Python worker set-up. At 8 KB a task holds many
    # small files; big files still split at spark.sql.files.maxPartitionBytes.
    "spark.sql.files.openCostInBytes": "8192",
    # Whole-stage codegen of the wide validation and encoding expressions makes methods larger
    # than the 8000-byte limit the JVM will JIT-compile, and they then run interpreted. Above
    # this size Spark falls back to code the JIT does compile (bench/README.md).
    "spark.sql.codegen.hugeMethodLimit": "8000",
}


def quiet_warnings() -> None:
    # petastorm uses pyarrow's legacy dataset API with this stack (see README): expected
    # FutureWarnings that would otherwise bury real output.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def get_spark(app_name: str, cfg: Config) -> SparkSession:
    """Build (or reuse) the session.

    Under spark-submit the master and resources come from its flags; a bare ``python`` run
    (or a test) gets ``spark.master`` from the config.
    """
    quiet_warnings()
    builder = SparkSession.builder.appName(app_name)
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ or "spark.master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "")
    if not submitted and SparkSession.getActiveSession() is None:
        builder = builder.master(cfg.spark.master).config("spark.ui.enabled", "false")
    builder = builder.config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
    SparkContext._ensure_initialized()  # so SparkConf() sees spark-submit's --conf values
    given = SparkConf()
    for k, v in DEFAULTS.items():
        if not given.contains(k):
            builder = builder.config(k, v)
    for k, v in cfg.spark.conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
