"""Bad records are written, never dropped: source, reason code, stage, detail."""
from __future__ import annotations

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline.core import lake

COLUMNS = ["source", "reason", "stage", "detail"]
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])


class TooManyBadRecords(RuntimeError):
    pass


def write(bad: DataFrame, uri: str) -> None:
    """``bad`` must carry source, reason, detail; the stage column is added by the caller."""
    bad.select(*COLUMNS).coalesce(1).write.mode("overwrite").parquet(uri)


def write_part(uri: str, part: int, attempt: int, source, reason, detail, stage: str) -> None:
    """One task's bad records as ``<uri>/part-<part>.parquet``, written by the task itself."""
    out = lake.ParquetPart(f"{uri}/part-{part:05d}.parquet", SCHEMA, 1 << 62, attempt)
    out.write(pa.table({"source": pa.array(source, pa.string()), "reason": pa.array(reason, pa.string()),
                        "stage": pa.array([stage] * len(source), pa.string()),
                        "detail": pa.array(detail, pa.string())}, schema=SCHEMA))
    out.close()


def check_fraction(by_reason: dict[str, int], total: int, max_fraction: float, quarantine_uri: str) -> None:
    bad = sum(by_reason.values())
    if total and bad / total > max_fraction:
        top = ", ".join(f"{r}={n}" for r, n in sorted(by_reason.items(), key=lambda kv: -kv[1])[:5])
        raise TooManyBadRecords(
            f"{bad} of {total} records ({bad / total:.1%}) were quarantined, over the limit "
            f"preprocess.max_bad_fraction={max_fraction}. Top reasons: {top}. "
            f"Inspect {quarantine_uri}, fix the source or raise the limit."
        )


def with_stage(df: DataFrame, stage: str) -> DataFrame:
    return df.withColumn("stage", F.lit(stage))
