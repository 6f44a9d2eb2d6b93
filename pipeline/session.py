"""The one place a SparkSession is built."""
from __future__ import annotations

import os
import warnings

from pyspark.sql import SparkSession

from pipeline.config import Config


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
    # Arrow batches feed the pandas UDFs; keep them modest so worker memory stays flat.
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", "1024")
    for k, v in cfg.spark.conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
