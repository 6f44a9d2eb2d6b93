"""Tabular records: read with a declared schema, validate, fit on train, encode.

Shared by preprocess (fit + encode) and score (encode with the parameters saved in the
dataset version), so training and serving cannot drift apart. Encoding is pure Spark SQL:
no Python UDF on the hot path.

Feature vector (float32, fixed length): standardised numerics in declared order, then one
one-hot block per categorical column whose slot 0 is "unknown" (unseen value or null).
"""
from __future__ import annotations

import math
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import TabularConf

CORRUPT = "_corrupt_record"
# Reason codes.
MALFORMED = "malformed_record"
MISSING_ID = "missing_id"
MISSING_LABEL = "missing_label"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"


class SchemaDriftError(ValueError):
    pass


def _string_schema(columns: list[str]) -> T.StructType:
    return T.StructType([T.StructField(c, T.StringType()) for c in columns] +
                        [T.StructField(CORRUPT, T.StringType())])


def check_columns(found: list[str], tab: TabularConf, uri: str, label_required: bool = True) -> None:
    """The input's columns must be exactly the declared ones (the label may be absent when scoring)."""
    declared = tab.columns()
    optional = set() if label_required else {tab.label_column}
    missing = [c for c in declared if c not in found and c not in optional]
    extra = [c for c in found if c not in declared and c != CORRUPT]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"not declared {extra}"] if extra else [])
        raise SchemaDriftError(
            f"schema drift in {uri}: {'; '.join(parts)}. Declared columns (dataset.tabular): {declared}. "
            f"Fix the input, or declare new columns (dataset.tabular.ignore to skip them) and retrain.")


def read(spark: SparkSession, uri: str, tab: TabularConf, label_required: bool = True) -> DataFrame:
    """All declared columns as strings plus _corrupt_record (raw text of unparseable records)."""
    if tab.format == "csv":
        header = spark.read.option("header", True).csv(uri).columns
        check_columns(header, tab, uri, label_required)
        df = (spark.read.schema(_string_schema(header)).option("header", True)
              .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT).csv(uri))
    elif tab.format == "json":
        # Sample the keys actually present, then read every record against them.
        found = spark.read.json(uri).columns
        check_columns([c for c in found if c != CORRUPT], tab, uri, label_required)
        df = (spark.read.schema(_string_schema([c for c in found if c != CORRUPT]))
              .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT).json(uri))
    else:
        df = spark.read.parquet(uri)
        check_columns(df.columns, tab, uri, label_required)
        df = df.select(*[F.col(c).cast("string").alias(c) for c in df.columns], F.lit(None).cast("string").alias(CORRUPT))
    if not label_required and tab.label_column not in df.columns:
        df = df.withColumn(tab.label_column, F.lit(None).cast("string"))
    return df


def with_reason(df: DataFrame, tab: TabularConf, label_required: bool = True) -> DataFrame:
    """Validates each record of ``read``'s output.

    Returns the declared columns with numerics parsed to double, ``reason``/``detail`` (null for
    a good record; the first failing check wins) and ``source``, the raw record as text for bad
    records (null for good ones, which need no copy). _corrupt_record is dropped.
    """
    data_cols = [c for c in df.columns if c != CORRUPT]
    dbl = {c: f"__dbl_{c}" for c in tab.numeric}
    # Parse every numeric once; Spark keeps the casts in their own projection because later
    # expressions use them more than once.
    df = df.select("*", *[F.col(c).cast("double").alias(d) for c, d in dbl.items()])
    checks: list[tuple[Any, str, Any]] = [(F.col(CORRUPT).isNotNull(), MALFORMED, F.lit("unparseable record"))]
    checks.append((F.col(tab.id_column).isNull() | (F.trim(tab.id_column) == ""), MISSING_ID, F.lit(tab.id_column)))
    if label_required:
        checks.append((F.col(tab.label_column).isNull() | (F.trim(tab.label_column) == ""), MISSING_LABEL,
                       F.lit(tab.label_column)))
    for c in tab.numeric:
        checks.append((F.col(c).isNotNull() & (F.trim(c) != "") & F.col(dbl[c]).isNull(), WRONG_TYPE,
                       F.concat(F.lit(f"{c}="), F.col(c))))
    for c in tab.numeric:
        v = F.col(dbl[c])
        checks.append((F.isnan(v) | (F.abs(v) == float("inf")), NON_FINITE, F.concat(F.lit(f"{c}="), F.col(c))))
    # One index of the first failing check, then reason and detail looked up from it: a CASE
    # chain of every check for each output column compiles to a method too large for the JIT.
    df = df.withColumn("__check", F.coalesce(*[F.when(cond, F.lit(i)) for i, (cond, _, _) in enumerate(checks)]))
    check = F.col("__check")
    reason = F.element_at(F.array(*[F.lit(code) for _, code, _ in checks]), check + 1)
    detail = F.lit(None).cast("string")
    for i, (_, _, det) in reversed(list(enumerate(checks))):
        detail = F.when(check == i, det).otherwise(detail)
    source = F.when(check.isNotNull(), F.coalesce(F.col(CORRUPT), F.to_json(F.struct(*data_cols))))
    return df.select(*[F.col(dbl[c]).alias(c) if c in dbl else F.col(c) for c in data_cols],
                     reason.alias("reason"), detail.alias("detail"), source.alias("source"))


def fit(train: DataFrame, tab: TabularConf) -> dict[str, Any]:
    """Imputation values, standardisation and category vocabularies from good train rows."""
    params: dict[str, Any] = {"numeric": {}, "categorical": {}}
    if tab.numeric:
        aggs = []
        for c in tab.numeric:
            v = F.col(c).cast("double")
            aggs += [F.avg(v).alias(f"{c}__mean"), F.stddev_pop(v).alias(f"{c}__std")]
        row = train.agg(*aggs).first()
        for c in tab.numeric:
            mean, std = row[f"{c}__mean"], row[f"{c}__std"]
            params["numeric"][c] = {"mean": float(mean or 0.0),
                                    "std": float(std) if std and not math.isnan(std) and std > 0 else 1.0}
    for c in tab.categorical:
        top = (train.filter(F.col(c).isNotNull()).groupBy(c).count()
               .orderBy(F.desc("count"), F.asc(c)).limit(tab.max_categories).collect())
        params["categorical"][c] = [r[c] for r in top]
    params["num_features"] = len(tab.numeric) + sum(len(v) + 1 for v in params["categorical"].values())
    params["feature_names"] = (list(tab.numeric) +
                               [f"{c}={v}" for c, vocab in params["categorical"].items() for v in ["<unknown>", *vocab]])
    return params


def features_column(tab: TabularConf, params: dict[str, Any]):
    """The fixed-length float32 feature array as one Spark expression."""
    parts = []
    for c in tab.numeric:
        p = params["numeric"][c]
        v = F.coalesce(F.col(c).cast("double"), F.lit(p["mean"]))  # nulls imputed with the train mean
        parts.append(((v - F.lit(p["mean"])) / F.lit(p["std"])).cast("float"))
    for c in tab.categorical:
        vocab = params["categorical"][c]
        known = F.col(c).isin(vocab) if vocab else F.lit(False)
        parts.append(F.when(known, 0.0).otherwise(1.0).cast("float"))
        parts += [F.when(F.col(c) == F.lit(v), 1.0).otherwise(0.0).cast("float") for v in vocab]
    return F.array(*parts)
