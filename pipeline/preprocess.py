"""Stage 1: raw files in the lake -> curated, versioned, Petastorm-ready Parquet.

Output: ``<lake>/curated/<dataset>/v=<version>/{train,val,test}/`` plus ``_manifest.json``;
bad records under ``<lake>/quarantine/<dataset>/<version>/``. ``curated/<dataset>/_latest``
moves to the new version only after everything above is written.
"""
from __future__ import annotations

import io
import json
import logging
import math
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline import (image_shards, lake, manifest, quarantine, sequence, sources, tabular, tabular_shards, tasks,
                      tracking)
from pipeline.config import Config
from pipeline.images import ImageSpec

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def sort_labels(names: list[str]) -> list[str]:
    """Numeric class names sort as numbers ("2" before "10"), others alphabetically."""
    return sorted(names, key=lambda n: (0, int(n), "") if n.lstrip("-").isdigit() else (1, 0, n))


# --- the job ----------------------------------------------------------------------------------

def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    ds = cfg.dataset
    version = lake.new_run_id()
    source = cfg.resolve(ds.source)
    out = cfg.uri("curated", ds.name, f"v={version}")
    quarantine_uri = cfg.uri("quarantine", ds.name, version)
    log.info("preprocess %s (%s): %s -> %s", ds.name, ds.kind, source, out)
    job = tracking.Job(cfg, spark, "preprocess", f"preprocess {ds.name} v={version}",
                       tags={"dataset": ds.name, "dataset_version": version}, params=cfg.to_dict())
    step = {"images": _images, "tabular": _tabular, "sequence": sequence.preprocess}[ds.kind]
    try:
        stats, label_names, fitted, schema = step(spark, cfg, source, out, quarantine_uri)
    except BaseException as e:
        job.fail()
        lake.remove(out)  # never marked latest, but do not leave a partial version behind
        if not isinstance(e, quarantine.TooManyBadRecords):  # that one's message points at the quarantine
            lake.remove(quarantine_uri)
        raise
    for uri in (out, quarantine_uri):  # left by task attempts that died mid-write, if any
        if n := lake.remove_temporaries(uri):
            log.warning("removed %d temporary files of failed task attempts under %s", n, uri)
    by_reason = stats["by_reason"]
    m = manifest.build(
        "preprocess", version, cfg.to_dict(),
        input_count=stats["input_count"], output_count=stats["output_count"],
        quarantined_by_reason=by_reason,
        dataset=ds.name, kind=ds.kind, version=version, source=source, uri=out,
        quarantine_uri=quarantine_uri if by_reason else None,
        splits={s: {"count": stats["split_counts"].get(s, 0),
                    "class_counts": {n: stats["split_class_counts"].get((s, n), 0) for n in label_names},
                    "uri": f"{out}/{s}"} for s in SPLITS},
        label_names=label_names,
        schema=schema,
        **({"image": {"height": ds.image.height, "width": ds.image.width, "channels": ds.image.channels,
                      "resize": ds.image.resize, "max_pixels": ds.image.max_pixels}} if ds.kind == "images" else {}),
        **fitted,
        **job.fields(),
    )
    manifest.write(out, m)
    lake.set_latest(cfg.uri("curated", ds.name), f"v={version}")
    job.finish(m, {f"split_{s}_count": v["count"] for s, v in m["splits"].items()})
    log.info("preprocess %s: %d in, %d out, %d quarantined %s", ds.name, m["input_count"],
             m["output_count"], m["quarantined_count"], m["quarantined_by_reason"])
    return m


def _images(spark: SparkSession, cfg: Config, source: str, out: str, quarantine_uri: str):
    """One job of Python tasks (pipeline/image_shards.py) that decode the images, write the
    curated files and the quarantine, and return counts and pixel sums."""
    ds = cfg.dataset
    n_tasks = tasks.num_tasks(spark, cfg.preprocess.files_per_split)
    common = dict(spec=ImageSpec.from_conf(ds.image), out_uri=out, quarantine_uri=quarantine_uri,
                  row_group_bytes=cfg.preprocess.row_group_mb * 1024 * 1024, stage="preprocess.validate")
    if sources.kind(source) != "path":  # a table or query with a binary content column
        df = image_table(spark, source, cfg)
        label_names = sort_labels([r[0] for r in df.select("label_name").distinct().collect() if r[0] is not None])
        body = partial(image_shards.run_table_task, split=cfg.preprocess.split, label_names=label_names, **common)
        # Spread over n_tasks partitions, so each split gets files_per_split files whatever the table's layout.
        rows = df.repartition(n_tasks).mapInPandas(body, image_shards.TASK_DDL).collect()
    else:
        sources.listing(source)  # a missing or empty source is an error before any task runs
        labels = _labels_file(cfg.resolve(ds.labels_file)) if ds.label_source == "file" else None
        plans, label_names = image_shards.plan(source, labels, cfg.preprocess.split, n_tasks)
        label_names = sort_labels(label_names)
        plan_uri = f"{out}/_staging"
        tasks.write_plans(plans, plan_uri)
        body = partial(image_shards.run_task, plan_uri=plan_uri, label_names=label_names, **common)
        rows = tasks.numbers(spark, n_tasks).mapInPandas(body, image_shards.TASK_DDL).collect()
        lake.remove(plan_uri)
    if not rows or sum(r["n"] for r in rows) == 0:
        raise sources.SourceError(f"source {source} has no records")
    stats = _image_stats(rows, ds.image.channels, ds.image.height * ds.image.width)
    quarantine.check_fraction(stats["by_reason"], stats["input_count"], cfg.preprocess.max_bad_fraction,
                              quarantine_uri)
    schema = {"id": "string", "path": "string", "label": "int32",
              "image": f"binary: uint8 HxWxC {ds.image.height}x{ds.image.width}x{ds.image.channels}, row-major"}
    return stats, label_names, {"normalization": stats["normalization"]}, schema


def image_table(spark: SparkSession, source: str, cfg: Config, date: str | None = None):
    """An images table or query as (content, label_name) rows, plus any score.passthrough columns."""
    img = cfg.dataset.image
    df = sources.load(spark, source, cfg.dataset.tabular, date)
    absent = [c for c in [img.content_column, img.label_column] if c not in df.columns]
    if img.content_column in absent:
        raise sources.SourceError(f"{source} has no column {img.content_column!r} (dataset.image.content_column); "
                                  f"it has {df.columns}")
    label = F.lit(None).cast("string") if absent else F.col(f"`{img.label_column}`").cast("string")
    return df.select(F.col(f"`{img.content_column}`").cast("binary").alias("content"), label.alias("label_name"))


def _labels_file(uri: str) -> dict[str, str]:
    """A ``path,label`` CSV (path relative to the source root) as a dict."""
    t = pd.read_csv(io.BytesIO(lake.read_bytes(uri)), dtype=str, keep_default_na=False)
    if list(t.columns[:2]) != ["path", "label"]:
        raise ValueError(f"{uri}: a labels file needs the header path,label; found {list(t.columns)}")
    return {p: label for p, label in zip(t["path"], t["label"]) if label != ""}


def _tabular(spark: SparkSession, cfg: Config, source: str, out: str, quarantine_uri: str):
    """Two passes of Python tasks (pipeline/tabular_shards.py): read, validate and stage, then
    encode and write with the parameters fitted on the train split in between. The first pass
    reads through Spark's reader (pipeline/sources.py), or, for plain files, with pyarrow in the
    tasks; both feed the same validation."""
    tab = cfg.dataset.tabular
    regression = cfg.train.task == "regression"
    n_tasks = tasks.num_tasks(spark, cfg.preprocess.files_per_split)
    staging = f"{out}/_staging"
    kw = dict(tab=tab, split=cfg.preprocess.split, staging_uri=staging, quarantine_uri=quarantine_uri,
              stage_name="preprocess.validate", regression=regression)
    files = sources.listing(source) if sources.kind(source) == "path" else []
    if sources.fast_path(source, tab, files):
        pieces = tabular.plan(source, tab, n_tasks, max_piece_bytes(spark), listing=files)
        tabular_shards.write_pieces(pieces, f"{staging}/_plan")
        stage = partial(tabular_shards.stage, plan_uri=f"{staging}/_plan", **kw)
        rows = tasks.numbers(spark, n_tasks).mapInPandas(stage, tabular_shards.STAGE_DDL).collect()
    else:
        df = sources.load(spark, source, tab)
        tabular.check_columns([c for c in df.columns if c != sources.CORRUPT], tab, source)
        df = sources.declared(df, tab, regression)
        with sources.reading(spark, 16_384):
            rows = df.mapInArrow(partial(tabular_shards.stage_arrow, **kw), tabular_shards.STAGE_DDL).collect()
    results = [json.loads(r["stats"]) for r in rows]
    by_reason: dict[str, int] = {}
    split_class: dict[tuple[str, str], int] = {}
    for r in results:
        for reason, n in r["bad"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        for s, label, n in r["counts"]:
            split_class[(s, label)] = split_class.get((s, label), 0) + n
    output = sum(split_class.values())
    stats = {"input_count": output + sum(by_reason.values()), "output_count": output, "by_reason": by_reason,
             "split_counts": {s: sum(n for (sp, _), n in split_class.items() if sp == s) for s in SPLITS},
             "split_class_counts": split_class}
    if stats["input_count"] == 0:
        raise sources.SourceError(f"source {source} has no records")
    quarantine.check_fraction(by_reason, stats["input_count"], cfg.preprocess.max_bad_fraction, quarantine_uri)

    label_names = [] if regression else sort_labels(sorted({label for _, label in split_class}))
    fits = [f for r in results for f in r["fits"]]
    params = tabular.merge_fits(fits, tab)
    tasks.write_plans(tabular_shards.deal(results, n_tasks), f"{staging}/_write")
    write = partial(tabular_shards.write_curated, tab=tab, params=params, label_names=label_names,
                    staging_uri=staging, plan_uri=f"{staging}/_write", out_uri=out,
                    row_group_bytes=cfg.preprocess.row_group_mb * 1024 * 1024, regression=regression)
    written = sum(r["n"] for r in tasks.numbers(spark, n_tasks).mapInPandas(write, tabular_shards.WRITE_DDL).collect())
    if written != output:
        raise RuntimeError(f"wrote {written} curated rows, expected {output}: a task's staged input changed")
    lake.remove(staging)
    schema = {"id": "string", "label": "float32" if regression else "int32",
              "features": f"array<float>[{params['num_features']}]"}
    fitted = {"tabular": params, **({"label_stats": tabular.label_stats(fits)} if regression else {})}
    return stats, label_names, fitted, schema


def max_piece_bytes(spark: SparkSession) -> int:
    """spark.sql.files.maxPartitionBytes: the most input bytes one task reads at a time."""
    return int(spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes())


def _image_stats(rows: list, channels: int, pixels_per_image: int) -> dict[str, Any]:
    """Counts by (split, reason, class) and train-split pixel moments from the tasks' results."""
    by_reason: dict[str, int] = {}
    split_counts: dict[str, int] = {}
    split_class: dict[tuple[str, str], int] = {}
    s = np.zeros(channels)
    q = np.zeros(channels)
    pixels_n = 0
    for r in rows:
        if r["reason"] is not None:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + r["n"]
            continue
        split_counts[r["split"]] = split_counts.get(r["split"], 0) + r["n"]
        split_class[(r["split"], r["label_name"])] = split_class.get((r["split"], r["label_name"]), 0) + r["n"]
        if r["split"] == "train":
            pixels_n += r["n"]
            if r["px_sum"] is not None:  # a split's sums ride on one of its rows
                s += r["px_sum"]
                q += r["px_sumsq"]
    total = sum(split_counts.values())
    return {
        "input_count": total + sum(by_reason.values()),
        "output_count": total,
        "by_reason": by_reason,
        "split_counts": split_counts,
        "split_class_counts": split_class,
        "normalization": _moments(s.tolist(), q.tolist(), pixels_n * pixels_per_image),
    }


def _moments(s: list[float], q: list[float], n_pixels: int) -> dict[str, list[float]]:
    """Per-channel mean/std in [0, 1] units from summed pixel moments (train split only)."""
    if n_pixels == 0:
        return {"mean": [0.0] * len(s), "std": [1.0] * len(s)}
    mean = [si / n_pixels for si in s]
    std = [math.sqrt(max(qi / n_pixels - m * m, 0.0)) or 1.0 for qi, m in zip(q, mean)]
    return {"mean": mean, "std": std}
