"""The preprocess job: raw files in the lake -> curated, versioned, Petastorm-ready Parquet.

Output: ``<lake>/curated/<dataset>/v=<version>/{train,val,test}/`` plus ``_manifest.json``;
bad records under ``<lake>/quarantine/<dataset>/<version>/``. ``curated/<dataset>/_latest``
moves to the new version only after everything above is written.
"""
from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from pipeline import kinds
from pipeline.core.layout import LakeLayout, version_dir_name
from pipeline.kinds.base import SPLITS, Curated, Target
from pipeline.core import lake, locks, manifest, quarantine
from pipeline.core.config import Config
from pipeline.ops import tracking

log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config) -> manifest.JobResult:
    """One preprocess run of the dataset at a time (pipeline/core/locks.py)."""
    layout = LakeLayout.of(cfg)
    with locks.output_lock(layout.preprocess_lock(cfg.dataset.name), f"dataset {cfg.dataset.name}",
                           cfg.lake.lock_wait_s):
        return _run(spark, cfg, layout)


def _run(spark: SparkSession, cfg: Config, layout: LakeLayout) -> manifest.JobResult:
    ds = cfg.dataset
    version = lake.new_run_id()
    source = cfg.resolve(ds.source)
    target = Target(layout, ds.name, version)
    out, quarantine_uri = target.uri, target.quarantine
    kind = kinds.for_config(cfg)  # the kind's own settings, before a run is opened or anything written
    log.info("preprocess %s (%s): %s -> %s", ds.name, ds.kind, source, out)
    with tracking.Job(cfg, spark, "preprocess", f"preprocess {ds.name} v={version}",
                      tags={"dataset": ds.name, "dataset_version": version}, params=cfg.to_dict(),
                      output={"dataset": ds.name}) as job:
        try:
            c = kind.preprocess(spark, cfg, source, target)
        except BaseException as e:  # the run ends FAILED, or KILLED on SIGTERM, as the with exits
            lake.remove(out)  # never marked latest, but do not leave a partial version behind
            if not isinstance(e, quarantine.TooManyBadRecords):  # that one's message points at the quarantine
                lake.remove(quarantine_uri)
            raise
        for uri in (out, quarantine_uri):  # left by task attempts that died mid-write, if any
            if n := lake.remove_temporaries(uri):
                log.warning("removed %d temporary files of failed task attempts under %s", n, uri)
        by_reason = c.by_reason
        warnings = c.warnings + _classes_without_training_rows(c)
        for w in warnings:
            log.warning("preprocess %s: %s (%s): %s", ds.name, w["code"], w["column"], w["detail"])
        m = manifest.build(
            "preprocess", version, cfg.to_dict(),
            input_count=c.input_count, output_count=c.output_count,
            quarantined_by_reason=by_reason,
            dataset=ds.name, kind=ds.kind, version=version, source=source, uri=out,
            quarantine_uri=quarantine_uri if by_reason else None,
            splits={s: {"count": c.split_counts.get(s, 0),
                        "class_counts": {n: c.split_class_counts.get((s, n), 0) for n in c.label_names},
                        "uri": target.split(s)} for s in SPLITS},
            label_names=c.label_names,
            schema=c.schema,
            warnings=warnings,
            drift_reference=c.drift_reference,
            **kind.manifest_fields(cfg),
            **c.fitted,
            **job.fields(),
        )
        manifest.write(out, m)
        lake.set_latest(layout.curated_root(ds.name), version_dir_name(version))
        if warnings:
            job.tracker.log_json("warnings.json", warnings)
        job.finish(m, {f"split_{s}_count": v["count"] for s, v in m["splits"].items()} | {"warnings": len(warnings)})
        log.info("preprocess %s: %d in, %d out, %d quarantined %s", ds.name, m["input_count"],
                 m["output_count"], m["quarantined_count"], m["quarantined_by_reason"])
        return manifest.JobResult.of(m)


def _classes_without_training_rows(c: Curated) -> list[dict[str, str]]:
    """A class seen only in val or test: the model cannot learn it (class_weights: auto gives it 0)."""
    return [{"code": "class_without_training_rows", "column": "label",
             "detail": f"class {name!r} has no train rows (val {c.split_class_counts.get(('val', name), 0)}, "
                       f"test {c.split_class_counts.get(('test', name), 0)})"}
            for name in c.label_names if not c.split_class_counts.get(("train", name))]
