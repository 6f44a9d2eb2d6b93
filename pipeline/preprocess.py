"""Stage 1: raw files in the lake -> curated, versioned, Petastorm-ready Parquet.

Output: ``<lake>/curated/<dataset>/v=<version>/{train,val,test}/`` plus ``_manifest.json``;
bad records under ``<lake>/quarantine/<dataset>/<version>/``. ``curated/<dataset>/_latest``
moves to the new version only after everything above is written.
"""
from __future__ import annotations

import json
import logging
import math
from functools import partial
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline import image_shards, lake, manifest, quarantine, tabular, tabular_shards
from pipeline.config import Config, SplitConf
from pipeline.images import ImageSpec

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


# --- transforms: DataFrame in, DataFrame out -------------------------------------------------

def read_files(spark: SparkSession, source_uri: str) -> DataFrame:
    """Every file under source_uri as (path, content). Non-images are kept so they get quarantined.

    Spark's file sources silently skip zero-byte files, so those are found with a metadata
    listing and added back with empty content: they must reach the quarantine too.
    """
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
             .load(source_uri).select("path", "content"))
    empty = lake.empty_files(source_uri)
    if empty:
        spark_paths = [lake.spark_path(u) for u in empty]
        files = files.unionByName(spark.createDataFrame([(p, bytearray()) for p in spark_paths], files.schema))
    return files


def with_relative_id(df: DataFrame, source_uri: str) -> DataFrame:
    """id = path relative to the source root: stable if the lake moves, used for splits and joins."""
    root = lake.local_path(source_uri).rstrip("/") + "/"
    return df.withColumn("id", F.expr(f"substring(path, instr(path, '{root}') + {len(root)})"))


def with_file_label(df: DataFrame, labels: DataFrame) -> DataFrame:
    """labels: (path, label) with path relative to the source root."""
    labels = labels.select(F.col("path").alias("_lp"), F.col("label").cast("string").alias("label_name"))
    return df.join(labels, df["id"] == labels["_lp"], "left").drop("_lp")


def with_split(df: DataFrame, split: SplitConf, key: str = "id") -> DataFrame:
    """Deterministic split from a hash of the key: the same on every run and any partitioning."""
    u = F.pmod(F.xxhash64(F.lit(split.seed), F.col(key)), F.lit(1_000_000)) / 1_000_000.0
    return df.withColumn(
        "split",
        F.when(u < split.train, "train").when(u < split.train + split.val, "val").otherwise("test"),
    )


def with_label_index(df: DataFrame, label_names: list[str]) -> DataFrame:
    mapping = F.create_map(*[x for i, n in enumerate(label_names) for x in (F.lit(n), F.lit(i))])
    return df.withColumn("label", mapping[F.col("label_name")].cast("int"))


def sort_labels(names: list[str]) -> list[str]:
    """Numeric class names sort as numbers ("2" before "10"), others alphabetically."""
    return sorted(names, key=lambda n: (0, int(n), "") if n.lstrip("-").isdigit() else (1, 0, n))


# --- the job ----------------------------------------------------------------------------------

def image_inputs(spark: SparkSession, cfg: Config, source: str, tasks: int) -> tuple[DataFrame, list[str]]:
    """One row per input file (uri, path, id, label_name, split) in ``tasks`` partitions, and the
    class names. label_name is null where the labels file names no label."""
    ds = cfg.dataset
    files, folders = image_shards.inputs(spark, source, tasks)
    files = with_relative_id(files, source)
    if ds.label_source == "folder":
        return with_split(files.withColumnRenamed("folder", "label_name"), cfg.preprocess.split), sort_labels(folders)
    labels = spark.read.option("header", "true").csv(cfg.resolve(ds.labels_file))
    files = with_split(with_file_label(files.drop("folder"), labels), cfg.preprocess.split).repartition(tasks)
    return files, sort_labels(image_shards.label_names(files))


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    ds = cfg.dataset
    version = lake.new_run_id()
    source = cfg.resolve(ds.source)
    out = cfg.uri("curated", ds.name, f"v={version}")
    quarantine_uri = cfg.uri("quarantine", ds.name, version)
    log.info("preprocess %s (%s): %s -> %s", ds.name, ds.kind, source, out)
    try:
        stats, label_names, fitted, schema = (_images if ds.kind == "images" else _tabular)(
            spark, cfg, source, out, quarantine_uri)
    except BaseException:
        lake.remove(out)  # never marked latest, but do not leave a partial version behind
        raise
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
    )
    manifest.write(out, m)
    lake.set_latest(cfg.uri("curated", ds.name), f"v={version}")
    log.info("preprocess %s: %d in, %d out, %d quarantined %s", ds.name, m["input_count"],
             m["output_count"], m["quarantined_count"], m["quarantined_by_reason"])
    return m


def _images(spark: SparkSession, cfg: Config, source: str, out: str, quarantine_uri: str):
    """Decoded images are written by the tasks that decode them (pipeline/image_shards.py);
    what comes back is per-(split, class) statistics and the bad records."""
    ds = cfg.dataset
    tasks = image_shards.num_tasks(spark, cfg.preprocess.files_per_split)
    planned, label_names = image_inputs(spark, cfg, source, tasks)
    write = partial(image_shards.write_shards, spec=ImageSpec.from_conf(ds.image), out_uri=out,
                    label_names=label_names, row_group_bytes=cfg.preprocess.row_group_mb * 1024 * 1024)
    records = planned.mapInPandas(write, image_shards.RESULT_DDL).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        stats = _collect_stats(records, ds.image.channels, ds.image.height * ds.image.width)
        if stats["by_reason"]:
            bad = records.filter(F.col("reason").isNotNull()).select("source", "reason", "detail")
            quarantine.write(quarantine.with_stage(bad, "preprocess.validate"), quarantine_uri)
        quarantine.check_fraction(stats["by_reason"], stats["input_count"], cfg.preprocess.max_bad_fraction,
                                  quarantine_uri)
    finally:
        records.unpersist()
    schema = {"id": "string", "path": "string", "label": "int32",
              "image": f"binary: uint8 HxWxC {ds.image.height}x{ds.image.width}x{ds.image.channels}, row-major"}
    return stats, label_names, {"normalization": stats["normalization"]}, schema


def _tabular(spark: SparkSession, cfg: Config, source: str, out: str, quarantine_uri: str):
    """Two passes of Python tasks (pipeline/tabular_shards.py): validate and stage, then encode
    and write with the parameters fitted on the train split in between."""
    tab = cfg.dataset.tabular
    tasks = image_shards.num_tasks(spark, cfg.preprocess.files_per_split)
    pieces = tabular.plan(source, tab, tasks, max_piece_bytes(spark))
    staging = f"{out}/_staging"
    parts = spark.range(0, tasks, 1, tasks)
    stage = partial(tabular_shards.stage, pieces=pieces, tab=tab, split=cfg.preprocess.split,
                    staging_uri=staging, quarantine_uri=quarantine_uri, stage_name="preprocess.validate")
    results = [json.loads(r["stats"]) for r in parts.mapInPandas(stage, tabular_shards.STAGE_DDL).collect()]
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
    quarantine.check_fraction(by_reason, stats["input_count"], cfg.preprocess.max_bad_fraction, quarantine_uri)

    label_names = sort_labels(sorted({label for _, label in split_class}))
    params = tabular.merge_fits([f for r in results for f in r["fits"]], tab)
    write = partial(tabular_shards.write_curated, tab=tab, params=params, label_names=label_names,
                    staging_uri=staging, out_uri=out, row_group_bytes=cfg.preprocess.row_group_mb * 1024 * 1024)
    written = sum(r["n"] for r in parts.mapInPandas(write, tabular_shards.WRITE_DDL).collect())
    if written != output:
        raise RuntimeError(f"wrote {written} curated rows, expected {output}: a task's staged input changed")
    lake.remove(staging)
    schema = {"id": "string", "label": "int32", "features": f"array<float>[{params['num_features']}]"}
    return stats, label_names, {"tabular": params}, schema


def max_piece_bytes(spark: SparkSession) -> int:
    """spark.sql.files.maxPartitionBytes: the most input bytes one task reads at a time."""
    return int(spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes())


def _collect_stats(decoded: DataFrame, channels: int, pixels_per_image: int) -> dict[str, Any]:
    """One small aggregation: counts by (split, reason, class) and train-split pixel moments."""
    # Image results carry a count per row (one row per split and class); tabular rows are records.
    aggs = [(F.sum("n") if "n" in decoded.columns else F.count(F.lit(1))).alias("n")]
    for c in range(channels):
        aggs += [F.sum(F.col("px_sum")[c]).alias(f"s{c}"), F.sum(F.col("px_sumsq")[c]).alias(f"q{c}")]
    rows = decoded.groupBy("split", "reason", "label_name").agg(*aggs).collect()

    by_reason: dict[str, int] = {}
    split_counts: dict[str, int] = {}
    split_class: dict[tuple[str, str], int] = {}
    classes: dict[str, int] = {}
    s = [0.0] * channels
    q = [0.0] * channels
    pixels_n = 0
    for r in rows:
        if r["reason"] is not None:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + r["n"]
            continue
        split_counts[r["split"]] = split_counts.get(r["split"], 0) + r["n"]
        split_class[(r["split"], r["label_name"])] = r["n"]
        classes[r["label_name"]] = classes.get(r["label_name"], 0) + r["n"]
        if r["split"] == "train":
            pixels_n += r["n"]
            for c in range(channels):
                s[c] += r[f"s{c}"] or 0.0  # image results: one row per split carries the sums
                q[c] += r[f"q{c}"] or 0.0
    total = sum(split_counts.values())
    return {
        "input_count": total + sum(by_reason.values()),
        "output_count": total,
        "by_reason": by_reason,
        "split_counts": split_counts,
        "split_class_counts": split_class,
        "class_counts": classes,
        "normalization": _moments(s, q, pixels_n * pixels_per_image),
    }


def _moments(s: list[float], q: list[float], n_pixels: int) -> dict[str, list[float]]:
    """Per-channel mean/std in [0, 1] units from summed pixel moments (train split only)."""
    if n_pixels == 0:
        return {"mean": [0.0] * len(s), "std": [1.0] * len(s)}
    mean = [si / n_pixels for si in s]
    std = [math.sqrt(max(qi / n_pixels - m * m, 0.0)) or 1.0 for qi, m in zip(q, mean)]
    return {"mean": mean, "std": std}
