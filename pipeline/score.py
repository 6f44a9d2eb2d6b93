"""The score job: new raw data + a trained model -> predictions in the lake.

Reads ``<dataset.score_source>/dt=<date>/``, prepares it with the same code and fitted
parameters the model was trained with (image decoding, or the tabular encoder of the model's
dataset version), scores in a ``mapInPandas`` that loads the model once per Python worker, and
replaces ``<lake>/predictions/<model>/dt=<date>/`` atomically: the new partition is written
with its manifest under ``_staging/`` first, then swapped in.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline import kinds
from pipeline.core import drift, lake, locks, manifest, quarantine
from pipeline.core.config import Config
from pipeline.core.layout import LakeLayout
from pipeline.ingest import sources
from pipeline.kinds import drift as spark_drift
from pipeline.kinds import predict
from pipeline.model import artifact
from pipeline.model import explain as explaining
from pipeline.ops import tracking
from pipeline.ops.registry import resolve_ref
from pipeline.spark.cli import Drifted, NoInput

log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config, score_date: str, model_ref: str | None = None) -> manifest.JobResult:
    """One score job per model and date at a time (pipeline/core/locks.py)."""
    name, run_id, model_uri, registry = resolve_ref(cfg.lake.root, model_ref or cfg.score.model,
                                                    tracking.settings(cfg))
    # Loaded once here: a corrupt or mismatched model is one line naming its file, before any task.
    spec = artifact.load_model(cfg.lake.root, f"{name}@{run_id}", device="cpu").spec
    with locks.output_lock(LakeLayout.of(cfg).score_lock(name, score_date), f"predictions of {name} for {score_date}",
                           cfg.lake.lock_wait_s):
        return _run(spark, cfg, score_date, model_ref, (name, run_id, model_uri, registry), spec)


def _run(spark: SparkSession, cfg: Config, score_date: str, model_ref: str | None,
         resolved: tuple[str, str, str, dict[str, str] | None], spec: dict[str, Any]) -> manifest.JobResult:
    name, run_id, model_uri, registry = resolved
    source = sources.for_date(cfg.resolve(cfg.dataset.score_source), score_date)
    job_id = lake.new_run_id()
    scored_at = datetime.now(timezone.utc)
    ref = f"{name}@{run_id}"  # pinned: a new _latest mid-run must not change the model
    log.info("scoring %s with %s", source, ref)
    tags = {"date": score_date, "model_name": name, "model_run_id": run_id, "model_ref": model_ref or cfg.score.model,
            "model_version": (registry or {}).get("version", ""), "dataset_version": spec["dataset"]["version"]}
    with tracking.Job(cfg, spark, "score", f"score {name} dt={score_date}", params=cfg.to_dict(), tags=tags,
                      output={"model_name": name, "date": score_date}) as job:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.score.batch_size))
        loads = spark.sparkContext.accumulator(0)
        kind = kinds.get(spec["input"]["kind"])
        explain = kind.explaining(spec, cfg.score.explain) if cfg.score.explain.method else None
        kw = dict(lake_root=cfg.lake.root, ref=ref, loads=loads, batch_size=cfg.score.batch_size, explain=explain)
        layout = LakeLayout.of(cfg)
        job_dir = layout.score_job(name, job_id)
        final = layout.predictions_partition(name, score_date)
        staging = layout.score_staging(name, job_id, score_date)
        try:
            s = kind.score(spark, cfg, spec, source, score_date, layout.score_plan(name, job_id), kw)
        except sources.SourceError as e:
            lake.remove(job_dir)
            raise NoInput(f"nothing to score for {score_date}: {e}") from None
        # Scored once, read four times (counts, output, drift, explanations). On disk, not in memory:
        # a partition of the scored frame is about the size of its input split, and building it in
        # the executor's heap first (MEMORY_AND_DISK) ran a 1 GB heap out of memory at 2M rows.
        scored = s.frame.persist(StorageLevel.DISK_ONLY)
        try:
            if s.check is not None:
                s.check(scored)
            # Where outputs are not one per input row (forecasts), ``used`` counts the input rows.
            used = [F.sum("used").alias("used")] if s.counts_used else []
            with sources.reading(spark):  # the cache holds what this reads
                rows = scored.groupBy("reason").agg(F.count(F.lit(1)).alias("n"), *used).collect()
            counts = {r["reason"]: r["n"] for r in rows}
            written = counts.pop(None, 0)
            output_count = next((r["used"] for r in rows if r["reason"] is None), 0) if s.counts_used else written
            input_count = output_count + sum(counts.values())
            if input_count == 0:
                raise NoInput(f"nothing to score for {score_date}: {source} has no records")
            quarantine_uri = layout.quarantine_score(cfg.dataset.name, job_id)
            if counts:
                bad = scored.filter(F.col("reason").isNotNull()).select("source", "reason", "detail")
                quarantine.write(quarantine.with_stage(bad, "score.prepare"), quarantine_uri)

            (scored.filter(F.col("reason").isNull())
             .select(F.col("key").alias(s.key),
                     *[F.col(f"`{c}`") for c in cfg.score.passthrough], *s.columns,
                     F.lit(name).alias("model_name"), F.lit(run_id).alias("run_id"),
                     F.lit(spec["dataset"]["version"]).alias("dataset_version"),
                     F.lit(scored_at).cast("timestamp").alias("scored_at"))
             .coalesce(max(1, min(8, written // 500_000 + 1)))
             .write.mode("overwrite").parquet(staging))
            report, warnings = _drift(cfg, spec, scored.filter(F.col("reason").isNull()), s.drift)
            explained = None if explain is None else _explained(cfg, scored.filter(F.col("reason").isNull()))
            if explain is not None and job.tracker.active:
                for file, data in kind.explain_artifacts(scored.filter(F.col("reason").isNull()), spec).items():
                    job.tracker.log_file(file, data, "explanations")
        except BaseException:  # the run ends FAILED, or KILLED on SIGTERM, as the with exits
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
            drift=report, warnings=warnings,
            **({"explain": explained} if explained is not None else {}),
            **job.fields(),
            **({"forecast_rows": written} if s.counts_used else {}),
        )
        manifest.write(staging, m)
        _swap_in(staging, final, layout.predictions_trash(name, job_id))
        lake.remove(job_dir)
        if cfg.score.output_table:
            write_table(spark, final, cfg.score.output_table, score_date)
        for w in warnings:
            log.warning("score %s: %s: %s", name, w["code"], w["detail"])
        if report is not None:
            log.warning("drift (PSI against the train split), the features that moved most: %s; predictions: %s",
                        ", ".join(f"{c} {v:.4f}" for c, v in drift.most_moved(report)), report["prediction"])
            job.tracker.set_tags({"drift": str(bool(report["failed"])).lower()})
        job.finish(m, {**_drift_metrics(report), **({f"explain_{k}": v for k, v in explained.items()
                                                        if isinstance(v, float)} if explained else {})})
    log.info("scored %d of %d records (%d quarantined) -> %s", output_count, input_count, sum(counts.values()), final)
    if report is not None and report["failed"]:
        moved = ", ".join(f"{c} ({report['features'][c]:.3f})" for c in report["failed"])
        raise Drifted(f"PSI above score.drift.fail_above={cfg.score.drift.fail_above} for {moved}; the predictions "
                      f"are published at {final}. Check the input of {score_date} against the train split, or retrain "
                      f"on newer data (README: Drift)", m)
    return manifest.JobResult.of(m)


def _drift(cfg: Config, spec: dict[str, Any], good, values=None) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """(the manifest's ``drift`` entry, warnings): each feature's PSI against the train split's
    reference in the model's dataset version (the features' values in ``values``, where the kind
    gives them apart from the scored rows ``good``), or None and a warning where there is none."""
    ds = spec["dataset"]
    try:
        reference = manifest.read(ds["uri"]).get("drift_reference")
    except FileNotFoundError:
        reference = None
    if reference is None or drift.VALUES not in (good if values is None else values).columns:
        return None, [{"code": "no_drift_reference", "column": "",
                       "detail": f"dataset version {ds['version']} has no drift reference (preprocessed by an "
                                 f"older version): drift is not computed; preprocess again and retrain to get one"}]
    counts, prediction = spark_drift.scored_counts(good, reference,
                                                   F.col(predict.DRIFT_COLUMN[predict.task_name(spec)]), values)
    return drift.report(reference, counts, prediction, cfg.score.drift.fail_above), []


def _explained(cfg: Config, good) -> dict[str, Any]:
    """The manifest's ``explain`` entry: the settings and how closely each explained row's
    attributions sum to f(input) - f(baseline) (completeness; exact for integrated gradients up to
    the path integral's error)."""
    a, e = F.col(explaining.ATTRIBUTED), F.col(explaining.EXPLAINED)
    gap = F.abs(a - e)
    row = good.filter(e.isNotNull()).agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum((gap <= 0.01 * F.abs(e) + 1e-4).cast("long")).alias("complete"),
        F.max(gap).alias("max_gap"), F.max(gap / F.greatest(F.abs(e), F.lit(1e-12))).alias("max_relative_gap"),
        F.expr(f"percentile_approx(abs({explaining.ATTRIBUTED} - {explaining.EXPLAINED}) / "
               f"greatest(abs({explaining.EXPLAINED}), 1e-12), 0.99)").alias("p99_relative_gap")).first()
    n = row["rows"]
    ex = cfg.score.explain
    return {"method": ex.method, "top_k": ex.top_k, "n_steps": ex.n_steps, "rows": n,
            "completeness": float(row["complete"] or 0) / n if n else None,
            "max_gap": row["max_gap"], "max_relative_gap": row["max_relative_gap"],
            "p99_relative_gap": row["p99_relative_gap"]}


def _drift_metrics(report: dict[str, Any] | None) -> dict[str, float]:
    """MLflow metrics drift_psi_<feature> (the name cleaned to MLflow's characters) and drift_psi_prediction."""
    if report is None:
        return {}
    out = {f"drift_psi_{re.sub(r'[^A-Za-z0-9_.-]', '_', c)}": v for c, v in report["features"].items()}
    if report["prediction"] is not None:
        out["drift_psi_prediction"] = report["prediction"]
    return out


def write_table(spark: SparkSession, partition: str, table: str, score_date: str) -> None:
    """The published predictions of one date into a catalog table partitioned by dt: created on
    the first run, later runs replace their date's partition only (dynamic partition overwrite)."""
    preds = spark.read.parquet(partition).withColumn("dt", F.lit(score_date))
    if not spark.catalog.tableExists(table):
        preds.write.format("parquet").partitionBy("dt").saveAsTable(table)
    else:
        # A column the table lacks (an explanation) is added to it; one these predictions lack is null.
        existing = spark.table(table).schema
        new = [f for f in preds.schema.fields if f.name not in existing.names]
        if new:
            spark.sql(f"ALTER TABLE {table} ADD COLUMNS ({', '.join(f'`{f.name}` {f.dataType.simpleString()}' for f in new)})")
            existing = spark.table(table).schema
        cols = [F.col(f"`{f.name}`") if f.name in preds.columns else F.lit(None).cast(f.dataType).alias(f.name)
                for f in existing.fields]
        key = "spark.sql.sources.partitionOverwriteMode"
        before = spark.conf.get(key)
        spark.conf.set(key, "dynamic")
        try:
            preds.select(*cols).write.insertInto(table, overwrite=True)
        finally:
            spark.conf.unset(key) if before is None else spark.conf.set(key, before)
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
