"""Drift in Spark: the train split's reference at preprocess, the scored rows' bucket counts at
score (pipeline/core/drift.py has the buckets and the PSI).

Both count with Spark aggregations: each row's bucket per feature, then one ``groupBy`` over
(feature, bucket), so what reaches the driver is features x buckets counts, never rows. Numeric
cut points come from ``approxQuantile`` (relative error 1e-3: a tenth of a percent of the rows
at most, well under a decile's share).
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline.core import drift

QUANTILE_ERROR = 1e-3


def _missing(col: Column) -> Column:
    return col.isNull() | F.isnan(col)


def count_values(df: DataFrame, values: Column, refs: list[dict[str, Any]]) -> list[list[int]]:
    """Rows per bucket of each element of the array ``values`` against ``refs`` (the same order),
    in one aggregation: the elements exploded with their position and joined to a small table of
    the references, so the plan stays the same size however many features there are."""
    if not refs:
        return []
    table = df.sparkSession.createDataFrame(
        [(i, r["kind"] == "numeric", [float(e) for e in r.get("edges", [])], len(r.get("values", [])))
         for i, r in enumerate(refs)], "feature int, numeric boolean, edges array<double>, size int")
    v = F.col("v")
    missing = v.isNull() | F.isnan(v)
    b = F.when(F.col("numeric"), F.when(missing, F.size("edges") + 1)
               .otherwise(F.size(F.filter("edges", lambda e: v > e))))
    b = b.otherwise(F.when(missing | (v < 0) | (v >= F.col("size")), F.col("size")).otherwise(v.cast("int")))
    rows = (df.select(F.posexplode(values.cast("array<double>")).alias("feature", "v"))
            .join(F.broadcast(table), "feature").groupBy("feature", b.alias("bucket")).count().collect())
    out = [[0] * (len(r["edges"]) + 2 if r["kind"] == "numeric" else len(r["values"]) + 1) for r in refs]
    for r in rows:
        out[r["feature"]][r["bucket"]] += r["count"]
    return out


def numeric_references(df: DataFrame, columns: dict[str, str], bins: int) -> dict[str, dict[str, Any]]:
    """The reference of each numeric column of ``df`` (``columns``: feature name -> column of df):
    ``bins`` quantile bins of the non-missing values plus a null bucket. Two passes over ``df``
    (persist it first): the quantiles, then the counts."""
    if not columns:
        return {}
    cols = list(columns.values())
    clean = df.select(*[F.when(~_missing(F.col(c)), F.col(c)).alias(c) for c in cols])
    quantiles = clean.approxQuantile(cols, [i / bins for i in range(1, bins)], QUANTILE_ERROR)
    edges = [drift.merge_edges(q) for q in quantiles]
    counts = count_values(df, F.array(*[F.col(c) for c in cols]), [{"kind": "numeric", "edges": e} for e in edges])
    return {name: drift.numeric_reference(e, n) for name, e, n in zip(columns, edges, counts)}


def numeric_features(df: DataFrame | None, names: list[str], bins: int) -> dict[str, dict[str, Any]]:
    """The references of numeric features held in ``df``'s columns ``f0``, ``f1``, ... (``names``
    in that order), each with its ``position`` in the scoring values; a feature without rows
    (``df`` None: no train rows) gets an empty reference."""
    found = numeric_references(df, {n: f"f{j}" for j, n in enumerate(names)}, bins) if df is not None else {}
    return {n: {**(found.get(n) or drift.numeric_reference([], [0, 0])), "position": j} for j, n in enumerate(names)}


def scored_counts(df: DataFrame, reference: dict[str, Any], prediction: Column | None,
                  values_df: DataFrame | None = None) -> tuple[dict[str, list[int]], list[int] | None]:
    """(the scored rows' counts per bucket of each reference feature, from ``df``'s ``VALUES``
    column in the reference's order; those of the predictions, ``prediction`` being the class
    index or the predicted value), as ``drift.report`` takes them, in one aggregation. With
    ``values_df`` the features are counted there instead (where the input rows are not the
    prediction rows: a forecast), in a second aggregation."""
    # The manifest keeps its keys sorted: each feature names its place in the values.
    features = dict(sorted(reference["features"].items(), key=lambda kv: kv[1]["position"]))
    refs = list(features.values())
    values = F.col(drift.VALUES).cast("array<double>")
    pred = reference.get("prediction")
    counts: list[list[int]] = []
    if values_df is not None:
        counts = count_values(values_df, values, refs)
        if pred and prediction is not None:
            counts += count_values(df, F.array(prediction.cast("double")), [pred])
    else:
        if pred and prediction is not None:
            refs.append(pred)
            values = F.concat(values, F.array(prediction.cast("double")))
        counts = count_values(df, values, refs)
    return dict(zip(features, counts)), counts[len(features)] if len(counts) > len(features) else None
