"""Stage 3: new raw data + a trained model -> predictions in the lake.

Reads ``<dataset.score_source>/dt=<date>/``, prepares it with the same code and fitted
parameters the model was trained with (image decoding, or the tabular encoder of the model's
dataset version), scores in a ``mapInPandas`` that loads the model once per Python worker, and
replaces ``<lake>/predictions/<model>/dt=<date>/`` atomically: the new partition is written
with its manifest under ``_staging/`` first, then swapped in.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import _parse_datatype_string

from pipeline import (artifact, image_shards, lake, manifest, quarantine, sequence, sources, tabular,
                      tabular_shards, tasks, tracking)
from pipeline.cli import NoInput
from pipeline.config import Config, TabularConf
from pipeline.images import ImageSpec, Rejected, decode_image
from pipeline.preprocess import image_table, max_piece_bytes

log = logging.getLogger(__name__)

PLAN = pa.schema([("uri", pa.string()), ("path", pa.string())])
# The columns each task's objective writes (objectives.py ``predictions``).
PREDICTION_DDL = {"classification": "prediction string, label_index int, probability float, probabilities array<float>",
                  "regression": "prediction double"}


def _task(spec: dict[str, Any]) -> str:
    return (spec.get("task") or {}).get("name", "classification")


def scored_ddl(spec: dict[str, Any]) -> str:
    return f"key string, {PREDICTION_DDL[_task(spec)]}, reason string, detail string, source string"


def prediction_columns(spec: dict[str, Any]) -> list[str]:
    return [c.split()[0] for c in PREDICTION_DDL[_task(spec)].split(", ")]


# One model per Python worker process, kept across batches and tasks (Spark reuses workers).
_MODELS: dict[tuple[str, str], artifact.LoadedModel] = {}


def _task_device() -> str | None:
    """The GPU Spark assigned to this task, if any; None lets torch pick (CPU without CUDA)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    return None


def cached_model(lake_root: str, ref: str, loads=None) -> artifact.LoadedModel:
    key = (lake_root, ref)
    if key not in _MODELS:
        _MODELS[key] = artifact.load_model(lake_root, ref, device=_task_device())
        if loads is not None:
            loads.add(1)
    return _MODELS[key]


Prepared = tuple[list[int], np.ndarray, list, list]  # ok rows, model inputs, reasons, details


def prepare_images(pdf: pd.DataFrame, m: artifact.LoadedModel) -> Prepared:
    img = m.spec["input"]["image"]
    spec = ImageSpec(**{k: img[k] for k in ("height", "width", "channels", "resize", "max_pixels")})
    ok, arrays = [], []
    reasons, details = [None] * len(pdf), [None] * len(pdf)
    for i, content in enumerate(pdf["content"]):
        try:
            arrays.append(decode_image(content, spec))
            ok.append(i)
        except Rejected as r:
            reasons[i], details[i] = r.reason, r.detail[:500]
    x = (np.stack(arrays).transpose(0, 3, 1, 2) if arrays
         else np.zeros((0, spec.channels, spec.height, spec.width), np.uint8))
    return ok, x, reasons, details


def prepare_features(pdf: pd.DataFrame, m: artifact.LoadedModel) -> Prepared:
    ok = [i for i, r in enumerate(pdf["reason"]) if r is None]
    n = m.spec["model"]["input_shape"][0]
    x = np.stack([pdf["features"].iloc[i] for i in ok]).astype(np.float32) if ok else np.zeros((0, n), np.float32)
    return ok, x, list(pdf["reason"]), list(pdf["detail"])


def score_frames(frames: Iterator[pd.DataFrame], prepare: Callable[..., Prepared], key: str, lake_root: str,
                 ref: str, loads=None, batch_size: int = 256) -> Iterator[pd.DataFrame]:
    """mapInPandas body -> scored_ddl(spec): the objective's prediction columns, or a reason for
    rows that cannot be scored (their prediction columns are null)."""
    m = cached_model(lake_root, ref, loads)
    objective = m.objective
    for pdf in frames:
        ok, x, reasons, details = prepare(pdf, m)
        preds = objective.predictions(m.predict_raw(x, batch_size)) if ok else {}
        columns: dict[str, Any] = {"key": pdf[key].values}
        for name in prediction_columns(m.spec):
            full = np.full(len(pdf), None, dtype=object)
            if ok:
                values = preds[name]
                full[ok] = [v.tolist() for v in values] if values.ndim > 1 else values
            columns[name] = full
        yield pd.DataFrame({**columns, "reason": reasons, "detail": details,
                            "source": (pdf["source"] if "source" in pdf else pdf[key]).values}).pipe(tasks.to_spark)


def image_frames(frames: Iterator[pd.DataFrame], plan_uri: str, batch_size: int) -> Iterator[pd.DataFrame]:
    """The task's files (its plan under plan_uri) as (path, content) frames of batch_size rows,
    read by the task itself: nothing per file passes through the JVM."""
    for t in tasks.each(frames):
        planned = tasks.read_plan(plan_uri, t)
        if not len(planned):
            continue
        read = lake.file_reader(planned["uri"].iloc[0])
        for lo in range(0, len(planned), batch_size):
            chunk = planned.iloc[lo:lo + batch_size]
            yield tasks.to_spark(pd.DataFrame({"path": chunk["path"].to_numpy(), "content": [read(u) for u in chunk["uri"]]}))


def _num_tasks(spark: SparkSession, total_bytes: int) -> int:
    """One per core at least, and one per spark.sql.files.maxPartitionBytes of input."""
    return max(spark.sparkContext.defaultParallelism, -(-total_bytes // max_piece_bytes(spark)))


def _scored(spark: SparkSession, cfg: Config, spec: dict[str, Any], source: str, score_date: str, staging: str,
            kw: dict[str, Any]) -> tuple[DataFrame, str]:
    """(scored rows, name of the key column) for the model's kind of input. The tasks read their
    share of the input themselves (pipeline/tasks.py)."""
    if spec["input"]["kind"] == "images" and sources.kind(source) != "path":  # a table with a binary column
        df = image_table(spark, source, cfg, score_date).drop("label_name")
        body = partial(score_frames, prepare=prepare_images, key="path", **kw)

        def with_ids(frames):
            for pdf in frames:
                yield pdf.assign(path=image_shards.content_ids(pdf["content"]))
        return df.mapInPandas(lambda it: body(with_ids(it)), scored_ddl(spec)), "path"
    if spec["input"]["kind"] == "images":
        files = sources.listing(source)  # zero-byte files included: they are quarantined
        n = _num_tasks(spark, sum(size for _, size in files))
        uris = [u for u, _ in files]
        plan_uri = f"{staging}/_plan"
        tasks.write_plans([pa.table({"uri": uris[t::n], "path": [lake.spark_path(u) for u in uris[t::n]]},
                                    schema=PLAN) for t in range(n)], plan_uri)
        frames = partial(image_frames, plan_uri=plan_uri, batch_size=kw["batch_size"])
        body = partial(score_frames, prepare=prepare_images, key="path", **kw)
        return tasks.numbers(spark, n).mapInPandas(lambda it: body(frames(it)), scored_ddl(spec)), "path"
    # Read, validated and encoded in the scoring tasks themselves (pipeline/tabular_shards.py),
    # with the parameters fitted when the model's dataset version was preprocessed.
    tab = _score_columns(spec, cfg)
    passthrough = cfg.score.passthrough
    files = sources.listing(source) if sources.kind(source) == "path" else []
    if sources.fast_path(source, tab, files, passthrough):
        n = _num_tasks(spark, sum(size for _, size in files))
        tabular_shards.write_pieces(tabular.plan(source, tab, n, max_piece_bytes(spark), label_required=False,
                                                 listing=files), f"{staging}/_plan")
        records = partial(tabular_shards.score_records, plan_uri=f"{staging}/_plan", tab=tab,
                          params=spec["input"]["tabular"], batch_size=kw["batch_size"])
        body = partial(score_frames, prepare=prepare_features, key="id", **kw)
        return tasks.numbers(spark, n).mapInPandas(lambda it: body(records(it)), scored_ddl(spec)), "id"
    df = sources.load(spark, source, tab, score_date)
    tabular.check_columns([c for c in df.columns if c != sources.CORRUPT], tab, source, label_required=False)
    absent = [c for c in passthrough if c not in df.columns]
    if absent:
        raise tabular.SchemaDriftError(f"score.passthrough: {absent} not in {source}; it has {df.columns}")
    df = sources.declared(df, tab, extra=passthrough)
    extra = [T.StructField(c, df.schema[sources.PASSTHROUGH + c].dataType) for c in passthrough]
    out = T.StructType(_parse_datatype_string(scored_ddl(spec)).fields + extra)
    arrow = to_arrow_schema(out)
    params = spec["input"]["tabular"]

    def body(batches):
        for pdf, rec in tabular_shards.score_batches(batches, tab, params, kw["batch_size"], passthrough):
            (scored,) = score_frames(iter([pdf]), prepare_features, "id", **kw)
            cols = pa.RecordBatch.from_pandas(scored, schema=pa.schema(list(arrow)[:len(arrow) - len(extra)]),
                                              preserve_index=False).columns
            cols += [rec.extra[sources.PASSTHROUGH + f.name].cast(arrow.field(f.name).type) for f in extra]
            yield pa.RecordBatch.from_arrays(cols, schema=arrow)
    return df.mapInArrow(body, out), "id"


def _score_columns(spec: dict[str, Any], cfg: Config) -> TabularConf:
    """The model's declared columns, read with this run's format, reader options and reader."""
    tab = cfg.dataset.tabular
    return TabularConf(**{**spec["input"]["columns"], "format": tab.format, "options": tab.options,
                          "reader": tab.reader})


def run(spark: SparkSession, cfg: Config, score_date: str, model_ref: str | None = None) -> dict[str, Any]:
    name, run_id, model_uri, registry = artifact.resolve_ref(cfg.lake.root, model_ref or cfg.score.model,
                                                             tracking.settings(cfg))
    spec = lake.read_json(f"{model_uri}/model.json")
    source = sources.for_date(cfg.resolve(cfg.dataset.score_source), score_date)
    job_id = lake.new_run_id()
    scored_at = datetime.now(timezone.utc)
    ref = f"{name}@{run_id}"  # pinned: a new _latest mid-run must not change the model
    log.info("scoring %s with %s", source, ref)
    job = tracking.Job(cfg, spark, "score", f"score {name} dt={score_date}", params=cfg.to_dict(), tags={
        "date": score_date, "model_name": name, "model_run_id": run_id, "model_ref": model_ref or cfg.score.model,
        "model_version": (registry or {}).get("version", ""), "dataset_version": spec["dataset"]["version"]})

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.score.batch_size))
    loads = spark.sparkContext.accumulator(0)
    kw = dict(lake_root=cfg.lake.root, ref=ref, loads=loads, batch_size=cfg.score.batch_size)
    root = cfg.uri("predictions", name)
    job_dir = f"{root}/_staging/{job_id}"
    final = f"{root}/dt={score_date}"
    staging = f"{job_dir}/dt={score_date}"
    forecasting = spec["input"]["kind"] == "sequence"
    try:
        if forecasting:  # one row per series and future step; the history rows are what is counted
            scored, key, columns = sequence.score(spark, spec, source, kw), "series", ["step", "time", "prediction"]
        else:
            (scored, key), columns = _scored(spark, cfg, spec, source, score_date, job_dir, kw), prediction_columns(spec)
    except sources.SourceError as e:
        lake.remove(job_dir)
        raise NoInput(f"nothing to score for {score_date}: {e}") from None
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        used = [F.sum("used").alias("used")] if forecasting else []
        with sources.reading(spark):  # the cache holds what this reads
            rows = scored.groupBy("reason").agg(F.count(F.lit(1)).alias("n"), *used).collect()
        counts = {r["reason"]: r["n"] for r in rows}
        written = counts.pop(None, 0)
        output_count = next((r["used"] for r in rows if r["reason"] is None), 0) if forecasting else written
        input_count = output_count + sum(counts.values())
        if input_count == 0:
            raise NoInput(f"nothing to score for {score_date}: {source} has no records")
        quarantine_uri = cfg.uri("quarantine", cfg.dataset.name, f"score-{job_id}")
        if counts:
            bad = scored.filter(F.col("reason").isNotNull()).select("source", "reason", "detail")
            quarantine.write(quarantine.with_stage(bad, "score.prepare"), quarantine_uri)

        (scored.filter(F.col("reason").isNull())
         .select(F.col("series" if forecasting else "key").alias(key),
                 *[F.col(f"`{c}`") for c in cfg.score.passthrough], *columns,
                 F.lit(name).alias("model_name"), F.lit(run_id).alias("run_id"),
                 F.lit(spec["dataset"]["version"]).alias("dataset_version"),
                 F.lit(scored_at).cast("timestamp").alias("scored_at"))
         .coalesce(max(1, min(8, written // 500_000 + 1)))
         .write.mode("overwrite").parquet(staging))
    except BaseException:
        job.fail()
        lake.remove(job_dir)  # nothing was published; the previous partition is untouched
        raise
    finally:
        scored.unpersist()

    m = manifest.build(
        "score", job_id, cfg.to_dict(), input_count=input_count, output_count=output_count,
        quarantined_by_reason=counts, date=score_date, source=source, uri=final,
        model={"name": name, "run_id": run_id, "uri": model_uri, "dataset_version": spec["dataset"]["version"],
               "registry": registry},
        model_loads=loads.value, quarantine_uri=quarantine_uri if counts else None,
        **job.fields(),
        **({"forecast_rows": written} if forecasting else {}),
    )
    manifest.write(staging, m)
    _swap_in(staging, final, f"{root}/_trash/{job_id}")
    lake.remove(job_dir)
    if cfg.score.output_table:
        write_table(spark, final, cfg.score.output_table, score_date)
    job.finish(m)
    log.info("scored %d of %d records (%d quarantined) -> %s", output_count, input_count, sum(counts.values()), final)
    return m


def write_table(spark: SparkSession, partition: str, table: str, score_date: str) -> None:
    """The published predictions of one date into a catalog table partitioned by dt: created on
    the first run, later runs replace their date's partition only (dynamic partition overwrite)."""
    preds = spark.read.parquet(partition).withColumn("dt", F.lit(score_date))
    if not spark.catalog.tableExists(table):
        preds.write.format("parquet").partitionBy("dt").saveAsTable(table)
    else:
        key = "spark.sql.sources.partitionOverwriteMode"
        before = spark.conf.get(key)
        spark.conf.set(key, "dynamic")
        try:
            preds.select(*spark.table(table).columns).write.insertInto(table, overwrite=True)
        finally:
            spark.conf.set(key, before)
    log.info("predictions for dt=%s written to table %s", score_date, table)


def _swap_in(staging: str, final: str, trash: str) -> None:
    """Replace a partition: the old one is moved aside before the new one moves in, and deleted last."""
    had_old = lake.exists(final)
    if had_old:
        lake.makedirs(trash.rsplit("/", 1)[0])
        lake.move(final, trash)
    try:
        lake.move(staging, final)
    except Exception:
        if had_old:
            lake.move(trash, final)  # put the previous partition back
        raise
    if had_old:
        lake.remove(trash)
