"""Time series: a long table -> fixed-length windows ordered by time within each series.

Input (``dataset.sequence``): one row per (series, time) with a target column and optional
covariate columns, read through Spark's CSV or Parquet reader. No series column means one
series. Time is a number (a year, a step index) or anything Spark casts to a timestamp.

What happens to each row, in order:

1. Validation (Spark SQL): a malformed line, a missing series or time, a time that is neither a
   number nor a timestamp, a value that is not a number or is infinite go to the quarantine with
   their reason. An empty value or ``NaN`` is a *missing value*, handled in step 3.
2. Per series, in time order (one pandas group per series): a second row at the same time is
   quarantined (``duplicate_time``). The series' step is the median time difference; a jump of
   more than 1.5 steps (missing timestamps) ends a *segment*.
3. Missing values: a run of at most ``max_fill`` consecutive missing values inside a segment is
   filled by linear interpolation in time; a longer run, or one at a segment's start or end,
   is quarantined (``unfilled_gap``) and ends the segment. No window spans two segments.
4. Splits by time within each series: the first ``split.train`` of its rows are train, the next
   ``split.val`` are val, the rest test. Mean and std of every column are fitted on train rows
   only.
5. Windows: ``window`` rows of history (target first, then the covariates, standardised) and
   the next ``horizon`` target values (the label, in original units), starting every ``stride``
   rows. A window belongs to the split of its targets and is dropped if they straddle two
   splits, so no window's label lies in a later split than its own; a val or test window may
   read earlier rows as history, as a forecast would.

Scoring takes each series' most recent ``window`` rows from the date's input (validated and
filled the same way, with the training statistics) and writes the next ``horizon`` values.

Drift (README: Drift) compares values, not windows: the train split's rows as they came (a
filled value counts as missing) against the valid rows of the date's input.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.core import drift, lake, privacy, quarantine
from pipeline.ingest import sources, tabular
from pipeline.core.config import Config, SequenceConf, SplitConf
from pipeline.core.privacy import Pii
from pipeline.spark import tasks

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MALFORMED = "malformed_record"
MISSING_SERIES = "missing_series"
MISSING_TIME = "missing_time"
BAD_TIME = "bad_time"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"
DUPLICATE_TIME = "duplicate_time"
UNFILLED_GAP = "unfilled_gap"
SHORT_HISTORY = "short_history"

_CORRUPT = "_corrupt_record"
VALIDATED_DDL = "series string, time string, t double, is_number boolean, v array<double>, source string"
PREPARED_DDL = ("series string, time string, t double, is_number boolean, v array<double>, raw array<double>, "
                "split string, segment int, step double, filled boolean, reason string, detail string, source string")
WINDOW_DDL = "id string, series string, time string, split string, features array<float>, label array<float>"


def value_columns(seq: SequenceConf) -> list[str]:
    return [seq.target_column, *seq.features]


def declared_columns(seq: SequenceConf) -> list[str]:
    return ([seq.series_column] if seq.series_column else []) + [seq.time_column, *value_columns(seq)]


# --- reading and validation (Spark) -----------------------------------------------------------

def read(spark: SparkSession, seq: SequenceConf, source: str, pii: Pii | None = None) -> DataFrame:
    """The declared columns as strings, plus ``_corrupt_record`` for malformed CSV lines. With a
    personal series column (``pii``), its values as their keyed hashes and a malformed line's
    text withheld, before anything else sees them."""
    df = _read(spark, seq, source)
    if pii is None or seq.series_column not in pii.hashed:
        return df
    hashed = df.mapInArrow(partial(_hash_column, column=seq.series_column, pii=pii), df.schema)
    return hashed.withColumn(_CORRUPT, F.when(F.col(_CORRUPT).isNotNull(), F.lit(tabular.REDACTED)))


def _hash_column(batches: Iterator[pa.RecordBatch], column: str, pii: Pii) -> Iterator[pa.RecordBatch]:
    for b in batches:
        i = b.schema.get_field_index(column)
        yield pa.RecordBatch.from_arrays([pii.hmac_hex(c) if j == i else c for j, c in enumerate(b.columns)],
                                         schema=b.schema)


def _read(spark: SparkSession, seq: SequenceConf, source: str) -> DataFrame:
    files = [(u, s) for u, s in lake.list_files(source) if s > 0]
    if not files:
        raise FileNotFoundError(f"no input files under {source}")
    found = tabular.file_columns(files[0][0], seq.format)
    declared = declared_columns(seq)
    missing = [c for c in declared if c not in found]
    extra = [c for c in found if c not in declared]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"not declared {extra}"] if extra else [])
        raise tabular.SchemaDriftError(
            f"schema drift in {files[0][0]}: {'; '.join(parts)}. Declared columns (dataset.sequence): {declared}")
    paths = [lake.spark_path(u) for u, _ in files]
    if seq.format == "parquet":
        df = spark.read.parquet(*paths)
        return df.select(*[F.col(c).cast("string").alias(c) for c in declared], F.lit(None).cast("string").alias(_CORRUPT))
    schema = T.StructType([T.StructField(c, T.StringType()) for c in found] + [T.StructField(_CORRUPT, T.StringType())])
    return (spark.read.option("header", True).option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", _CORRUPT).schema(schema).csv(paths))


def _try_cast(sql: str, to: str):
    """Null where the text is not a ``to``: Spark 4's ANSI casts fail the task instead."""
    return F.expr(f"try_cast({sql} AS {to})")


def validate(df: DataFrame, seq: SequenceConf) -> DataFrame:
    """Adds ``reason``/``detail`` (null for good rows), ``t`` (seconds since the epoch or the
    number itself), ``is_number`` and ``v`` (the values, NaN where missing)."""
    declared = declared_columns(seq)
    raw_time = F.col(seq.time_column)
    time_sql = sources.quoted(seq.time_column)
    as_number = _try_cast(time_sql, "DOUBLE")
    t = F.coalesce(as_number, _try_cast(time_sql, "TIMESTAMP").cast("double"))
    checks: list[tuple[Any, str, Any]] = [(F.col(_CORRUPT).isNotNull(), MALFORMED, F.lit("wrong number of fields"))]
    if seq.series_column:
        checks.append((F.col(seq.series_column).isNull(), MISSING_SERIES, F.lit(seq.series_column)))
    checks += [(raw_time.isNull(), MISSING_TIME, F.lit(seq.time_column)),
               (t.isNull(), BAD_TIME, F.concat(F.lit(f"{seq.time_column}="), raw_time))]
    values = []
    for c in value_columns(seq):
        raw = F.trim(F.col(c))
        num = _try_cast(f"trim({sources.quoted(c)})", "DOUBLE")
        missing = raw.isNull() | (raw == "") | F.isnan(num)
        checks.append((~missing & num.isNull(), WRONG_TYPE, F.concat(F.lit(f"{c}="), raw)))
        checks.append((~missing & ((num == float("inf")) | (num == float("-inf"))), NON_FINITE, F.concat(F.lit(f"{c}="), raw)))
        values.append(F.when(missing, F.lit(float("nan"))).otherwise(num))
    reason, detail = F.lit(None).cast("string"), F.lit(None).cast("string")
    for cond, code, text in reversed(checks):  # the first failing check names the row
        reason = F.when(cond, F.lit(code)).otherwise(reason)
        detail = F.when(cond, text).otherwise(detail)
    source = F.coalesce(F.col(_CORRUPT), F.to_json(F.struct(*[F.col(c) for c in declared])))
    series = F.col(seq.series_column) if seq.series_column else F.lit("")
    return df.select(series.alias("series"), raw_time.alias("time"), t.alias("t"),
                     as_number.isNotNull().alias("is_number"), F.array(*values).alias("v"),
                     source.alias("source"), reason.alias("reason"), detail.alias("detail"))


# --- per series (pandas, in the tasks) ----------------------------------------------------------

def step_of(t: np.ndarray) -> float:
    d = np.diff(t)
    d = d[d > 0]
    return float(np.median(d)) if len(d) else float("nan")


def prepare_series(pdf: pd.DataFrame, max_fill: int, split: SplitConf) -> pd.DataFrame:
    """One series' validated rows -> PREPARED_DDL rows: sorted, de-duplicated, gaps filled or
    quarantined, segments numbered, split assigned by time."""
    pdf = pdf.sort_values(["t", "source"], kind="mergesort").reset_index(drop=True)
    n = len(pdf)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    dup = pdf["t"].duplicated().to_numpy()
    reason[dup], detail[dup] = DUPLICATE_TIME, [f"time={x}" for x in pdf["time"][dup]]
    keep = ~dup
    t = pdf["t"].to_numpy(np.float64)
    v = np.stack(pdf["v"].to_numpy()).astype(np.float64) if n else np.zeros((0, 0))
    raw = v.copy()  # before filling: drift counts missing values as missing
    idx = np.flatnonzero(keep)
    step = step_of(t[idx])
    # segments: a jump of more than 1.5 steps in time starts a new one
    seg = np.zeros(n, np.int64)
    if len(idx) > 1 and np.isfinite(step):
        seg[idx] = np.r_[0, np.cumsum(np.diff(t[idx]) > 1.5 * step)]
    filled = np.zeros(n, bool)
    bad_gap = np.zeros(n, bool)
    for s in np.unique(seg[idx]):
        rows = idx[seg[idx] == s]
        for j in range(v.shape[1]):
            col = v[rows, j]
            miss = np.isnan(col)
            if not miss.any():
                continue
            # runs of missing values
            edges = np.flatnonzero(np.diff(np.r_[0, miss.astype(np.int8), 0]))
            for a, b in zip(edges[::2], edges[1::2]):  # run [a, b)
                if b - a <= max_fill and a > 0 and b < len(rows):
                    continue
                bad_gap[rows[a:b]] = True
            fill = miss & ~bad_gap[rows]
            if fill.any():
                ok = ~miss
                col[fill] = np.interp(t[rows][fill], t[rows][ok], col[ok])
                v[rows, j] = col
                filled[rows[fill]] = True
    reason[bad_gap & keep] = UNFILLED_GAP
    detail[bad_gap & keep] = [f"a run of missing values longer than max_fill={max_fill} or at a segment edge"] * int((bad_gap & keep).sum())
    good = keep & ~bad_gap
    gidx = np.flatnonzero(good)
    # a quarantined run (or a time jump) between two kept rows starts a new segment
    segment = np.zeros(n, np.int32)
    if len(gidx):
        breaks = (np.diff(gidx) > 1) | (np.diff(seg[gidx]) != 0)
        segment[gidx] = np.r_[0, np.cumsum(breaks)]
    split_name = np.full(n, None, dtype=object)
    if len(gidx):
        u = np.arange(len(gidx)) / len(gidx)
        split_name[gidx] = np.where(u < split.train, "train", np.where(u < split.train + split.val, "val", "test"))
    return pd.DataFrame({
        "series": pdf["series"].to_numpy(), "time": pdf["time"].to_numpy(), "t": t,
        "is_number": pdf["is_number"].to_numpy(), "v": list(v), "raw": list(raw), "split": split_name, "segment": segment,
        "step": step_of(t[gidx]), "filled": filled, "reason": reason, "detail": detail, "source": pdf["source"].to_numpy(),
    })


def windows_of(pdf: pd.DataFrame, window: int, horizon: int, stride: int, mean: np.ndarray,
               std: np.ndarray) -> pd.DataFrame:
    """One series' prepared good rows -> WINDOW_DDL rows."""
    pdf = pdf.sort_values("t", kind="mergesort").reset_index(drop=True)
    v = np.stack(pdf["v"].to_numpy()).astype(np.float64) if len(pdf) else np.zeros((0, len(mean)))
    z = ((v - mean) / std).astype(np.float32)
    seg, split = pdf["segment"].to_numpy(), pdf["split"].to_numpy()
    out: dict[str, list] = {k: [] for k in ("id", "series", "time", "split", "features", "label")}
    for s in np.unique(seg):
        rows = np.flatnonzero(seg == s)
        for start in range(0, len(rows) - window - horizon + 1, stride):
            hist = rows[start:start + window]
            target = rows[start + window:start + window + horizon]
            if split[target[0]] != split[target[-1]]:
                continue
            out["id"].append(f"{pdf['series'].iloc[0]}@{pdf['time'].iloc[target[0]]}")
            out["series"].append(pdf["series"].iloc[0])
            out["time"].append(pdf["time"].iloc[target[0]])
            out["split"].append(split[target[0]])
            out["features"].append(z[hist].ravel())
            out["label"].append(v[target, 0].astype(np.float32))
    return pd.DataFrame(out)


# --- preprocess ----------------------------------------------------------------------------------

def _bad(df: DataFrame) -> DataFrame:
    return df.filter(F.col("reason").isNotNull()).select("source", "reason", "detail")


def preprocess(spark: SparkSession, cfg: Config, source: str, split_uris: dict[str, str], quarantine_uri: str,
               reference: Callable[[DataFrame], dict[str, Any]]):
    """preprocess.run's sequence step: (stats, label_names, fitted, schema) as for the other kinds,
    and what ``reference`` (the drift reference) makes of the train split's rows: one column per
    value column (``f0`` the target, then the covariates), in original units, NaN where the input
    had no value (filled or not), as scoring counts them."""
    seq, split = cfg.dataset.sequence, cfg.preprocess.split
    pii = privacy.from_config(cfg.dataset.privacy)
    validated = validate(read(spark, seq, source, pii), seq).persist()
    try:
        prepared = (validated.filter(F.col("reason").isNull()).drop("reason", "detail")
                    .groupBy("series")
                    .applyInPandas(partial(prepare_series, max_fill=seq.max_fill, split=split), PREPARED_DDL)
                    .persist())
        bad = _bad(validated).unionByName(_bad(prepared))
        by_reason = {r["reason"]: r["n"] for r in bad.groupBy("reason").count().withColumnRenamed("count", "n").collect()}
        good = prepared.filter(F.col("reason").isNull())
        counts = {r["split"]: r["n"] for r in good.groupBy("split").count().withColumnRenamed("count", "n").collect()}
        output = sum(counts.values())
        quarantine.check_fraction(by_reason, output + sum(by_reason.values()), cfg.preprocess.max_bad_fraction,
                                  quarantine_uri)
        if by_reason:
            quarantine.write(quarantine.with_stage(bad, "preprocess.validate"), quarantine_uri)
        k = len(value_columns(seq))
        moments = (good.filter(F.col("split") == "train")
                   .select(F.posexplode("v").alias("j", "x")).groupBy("j")
                   .agg(F.avg("x").alias("mean"), F.stddev_pop("x").alias("std")).collect())
        if len(moments) != k:
            raise ValueError(f"no training rows in {source}: every row was quarantined or the series are empty")
        moments = sorted(moments, key=lambda r: r["j"])
        mean = np.array([r["mean"] for r in moments])
        std = np.array([r["std"] or 1.0 for r in moments])
        train_rows = good.filter(F.col("split") == "train").select(*[F.col("raw")[j].alias(f"f{j}") for j in range(k)])
        drift_reference = reference(train_rows)
        filled = good.filter("filled").count()
        first = good.select("is_number").first()
        steps = [r["step"] for r in good.groupBy("series").agg(F.first("step").alias("step")).collect()]
        wins = (good.select("series", "t", "time", "v", "split", "segment").groupBy("series")
                .applyInPandas(partial(windows_of, window=seq.window, horizon=seq.horizon, stride=seq.stride,
                                       mean=mean, std=std), WINDOW_DDL).persist())
        try:
            window_counts = {r["split"]: r["n"] for r in wins.groupBy("split").count().withColumnRenamed("count", "n").collect()}
            for s in SPLITS:
                (wins.filter(F.col("split") == s).drop("split")
                 .repartition(cfg.preprocess.files_per_split)
                 .write.option("parquet.block.size", cfg.preprocess.row_group_mb * 1024 * 1024)
                 .mode("overwrite").parquet(lake.spark_path(split_uris[s])))
        finally:
            wins.unpersist()
        series_count = len(steps)
    finally:
        validated.unpersist()
    for s in SPLITS:
        if not window_counts.get(s):
            raise ValueError(f"the {s} split has no window of {seq.window}+{seq.horizon} rows; lower "
                             f"dataset.sequence.window or horizon, or give the split a larger fraction")
    columns = value_columns(seq)
    fitted = {"sequence": {
        **vars(seq), "columns": columns, "series_count": series_count,
        "step": float(np.nanmedian(steps)) if steps else None,
        "time_kind": "number" if first and first["is_number"] else "timestamp",
        "time_zone": spark.conf.get("spark.sql.session.timeZone"),
        "normalization": {"mean": mean.tolist(), "std": std.tolist()},
        "filled_values_rows": filled, "rows_by_split": {s: counts.get(s, 0) for s in SPLITS},
    }, "label_stats": {"mean": float(mean[0]), "std": float(std[0])}, **({"privacy": pii.describe()} if pii else {})}
    stats = {"input_count": output + sum(by_reason.values()), "output_count": output, "by_reason": by_reason,
             "split_counts": {s: window_counts.get(s, 0) for s in SPLITS}, "split_class_counts": {}}
    schema = {"id": "string", "series": "string", "time": "string (first forecast step)",
              "features": f"array<float>[{seq.window}x{len(columns)}] standardised, {columns} per step",
              "label": f"array<float>[{seq.horizon}] {seq.target_column}, original units"}
    return stats, [], fitted, schema, drift_reference


# --- scoring ------------------------------------------------------------------------------------

FORECAST_DDL = ("series string, step int, time string, prediction double, used long, reason string, "
                "detail string, source string")
# Explaining a forecast (pipeline/kinds/sequence.py): (a function (model, windows, outputs, rows ok,
# rows) -> the explanation's columns, their DDL).
Explained = tuple[Callable[..., dict[str, np.ndarray]], str]


def _time_after(t_last: float, k: int, step: float, is_number: bool, tz: str) -> str:
    t = t_last + k * step
    if is_number:
        return f"{t:.10g}"
    return pd.Timestamp(t, unit="s", tz="UTC").tz_convert(tz).tz_localize(None).isoformat()


def forecast_series(pdf: pd.DataFrame, load: Callable[[], Any], tz: str,
                    explained: Explained | None = None) -> pd.DataFrame:
    """One series' validated rows -> its forecast rows (reason null; ``used`` = the series' good
    rows, on the first one), or its rows quarantined when fewer than ``window`` contiguous rows
    end the history. Gaps are filled exactly as in preprocess. With ``explained``, each forecast
    row carries the series' explanation (of the sum over the horizon), and the first its check."""
    m = load()  # the model, once per Python worker
    seq = m.spec["input"]["sequence"]
    window, horizon = seq["window"], seq["horizon"]
    pdf = prepare_series(pdf, seq["max_fill"], SplitConf(train=1.0, val=0.0, test=0.0))
    bad = pdf[pdf["reason"].notna()]
    good = pdf[pdf["reason"].isna()].sort_values("t", kind="mergesort")
    frames = [pd.DataFrame({"series": bad["series"], "step": 0, "time": bad["time"], "prediction": np.nan, "used": 0,
                            "reason": bad["reason"], "detail": bad["detail"], "source": bad["source"]})]
    last_segment = good[good["segment"] == good["segment"].max()] if len(good) else good
    if len(last_segment) < window:
        frames.append(pd.DataFrame({
            "series": good["series"], "step": 0, "time": good["time"], "prediction": np.nan, "used": 0,
            "reason": SHORT_HISTORY,
            "detail": f"{len(last_segment)} contiguous rows end the history; the model needs {window}",
            "source": good["source"]}))
    else:
        norm = seq["normalization"]
        hist = np.stack(last_segment["v"].to_numpy()[-window:]).astype(np.float64)
        x = ((hist - np.asarray(norm["mean"])) / np.asarray(norm["std"])).astype(np.float32).reshape(1, -1)
        out = m.predict_raw(x)
        pred = np.asarray(m.objective.predictions(out)["prediction"], np.float64).reshape(-1)
        step = step_of(last_segment["t"].to_numpy())
        step = step if np.isfinite(step) else float(seq["step"])
        t_last, is_number = float(last_segment["t"].iloc[-1]), bool(last_segment["is_number"].iloc[-1])
        frames.append(pd.DataFrame({
            "series": pdf["series"].iloc[0], "step": np.arange(1, horizon + 1),
            "time": [_time_after(t_last, k, step, is_number, tz) for k in range(1, horizon + 1)],
            "prediction": pred[:horizon], "used": [len(good)] + [0] * (horizon - 1),
            "reason": None, "detail": None, "source": None,
            **({} if explained is None else {c: [v[0]] * horizon if v.dtype == object else [v[0]] + [np.nan] * (horizon - 1)
                                             for c, v in explained[0](m, x, out, [0], 1).items()})}))
    frame = pd.concat(frames, ignore_index=True)
    if explained is not None:  # the quarantined rows' explanations are null
        frame = frame.astype({c: object for c in frame.columns if c not in FORECAST_COLUMNS})
        frame = frame.where(frame.notna(), None)
    return tasks.to_spark(frame)


FORECAST_COLUMNS = [c.split()[0] for c in FORECAST_DDL.split(", ")]


def score(spark: SparkSession, spec: dict[str, Any], source: str, load: Callable[[], Any],
          explained: Explained | None = None) -> tuple[DataFrame, DataFrame]:
    """(FORECAST_DDL rows for the date's input (and the explanation's columns): forecasts (reason
    null) and quarantined rows; the input's valid rows as drift.VALUES, the value columns in
    original units, NaN where missing, for drift: Spark reads the input again for these, without
    Python)."""
    seq_spec = spec["input"]["sequence"]
    seq = SequenceConf(**{k: seq_spec[k] for k in SequenceConf.__dataclass_fields__})
    validated = validate(read(spark, seq, source, privacy.of(spec["input"].get("privacy"))), seq)
    tz = spark.conf.get("spark.sql.session.timeZone") or "UTC"  # always set; tz_convert(None) is UTC too
    ddl = FORECAST_DDL if explained is None else f"{FORECAST_DDL}, {explained[1]}"
    forecasts = validated.filter(F.col("reason").isNull()).drop("reason", "detail").groupBy("series").applyInPandas(
        partial(forecast_series, load=load, tz=tz, explained=explained), ddl)
    early = _bad(validated).select(F.lit(None).cast("string").alias("series"), F.lit(0).alias("step"),
                                   F.lit(None).cast("string").alias("time"),
                                   F.lit(None).cast("double").alias("prediction"), F.lit(0).cast("long").alias("used"),
                                   "reason", "detail", "source",
                                   *[F.lit(None).cast(f.dataType).alias(f.name) for f in forecasts.schema.fields
                                     if f.name not in FORECAST_COLUMNS])
    return forecasts.unionByName(early), validated.filter(F.col("reason").isNull()).select(F.col("v").alias(drift.VALUES))
