"""Bad records are written, never dropped: source, reason code, stage, detail."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

COLUMNS = ["source", "reason", "stage", "detail"]


class TooManyBadRecords(RuntimeError):
    pass


def write(bad: DataFrame, uri: str) -> None:
    """``bad`` must carry source, reason, detail; the stage column is added by the caller."""
    bad.select(*COLUMNS).coalesce(1).write.mode("overwrite").parquet(uri)


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
