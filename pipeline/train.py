"""Stage 2: curated Parquet -> trained model artifact.

Resolves the dataset version, plans the run (steps per epoch, learning rate, model spec),
then launches ``trainer.train_rank`` on ``train.num_proc`` Spark tasks with
``horovod.spark.run``. Rank 0 writes the artifact; the driver moves
``models/<name>/_latest`` to it once every rank has returned.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from pyspark.sql import SparkSession

from pipeline import artifact, lake, manifest, schedule
from pipeline.config import Config

log = logging.getLogger(__name__)


class TrainingSetupError(ValueError):
    pass


def resolve_dataset(cfg: Config) -> tuple[str, dict[str, Any]]:
    """(dataset uri, its preprocess manifest) for train.dataset_version."""
    parent = cfg.uri("curated", cfg.dataset.name)
    version = cfg.train.dataset_version
    if version == "latest":
        version = lake.get_latest(parent)
    elif not version.startswith("v="):
        version = f"v={version}"
    uri = f"{parent}/{version}"
    if not lake.exists(f"{uri}/{manifest.MANIFEST}"):
        raise TrainingSetupError(f"dataset version {version} not found or incomplete at {uri}; "
                                 f"versions: {[v for v in lake.listdir(parent) if v.startswith('v=')]}")
    return uri, manifest.read(uri)


def plan(cfg: Config, run_id: str, world_size: int, resume: bool = False) -> dict[str, Any]:
    """The plain-value parameters every rank receives."""
    data_uri, m = resolve_dataset(cfg)
    kind = m["kind"]
    train_rows = m["splits"]["train"]["count"]
    if train_rows < cfg.train.batch_size * world_size:
        raise TrainingSetupError(f"{train_rows} training rows cannot fill one batch of {cfg.train.batch_size} "
                                 f"on each of {world_size} ranks; lower train.batch_size or train.num_proc")
    files = m["config"]["preprocess"]["files_per_split"]
    if files < world_size:
        raise TrainingSetupError(
            f"the dataset has {files} files per split but training uses {world_size} ranks; petastorm needs "
            f"at least one row group per rank. Re-run preprocess with --set preprocess.files_per_split={world_size} "
            f"(or a multiple)")
    if kind == "images":
        img = m["image"]
        shape = [img["channels"], img["height"], img["width"]]
        data_input = {"kind": kind, "field": "image", "image": img, "normalization": m["normalization"]}
    else:
        if cfg.train.arch != "mlp":
            raise TrainingSetupError(f"train.arch={cfg.train.arch!r} needs images; use train.arch=mlp for tabular data")
        shape = [m["tabular"]["num_features"]]
        data_input = {"kind": kind, "field": "features", "tabular": m["tabular"],
                      "columns": m["config"]["dataset"]["tabular"]}
    model_spec = {"arch": cfg.train.arch, "num_classes": len(m["label_names"]), "input_shape": shape}
    model_uri = artifact.model_dir(cfg.lake.root, cfg.train.model_name, run_id)
    return {
        "run_id": run_id,
        "train": vars(cfg.train).copy(),
        "config": cfg.to_dict(),
        "model_spec": model_spec,
        "input": data_input,
        "train_url": m["splits"]["train"]["uri"],
        "val_url": m["splits"]["val"]["uri"],
        "test_url": m["splits"]["test"]["uri"],
        "steps_per_epoch": schedule.steps_per_epoch(train_rows, cfg.train.batch_size, world_size),
        "model_uri": model_uri,
        "checkpoint_dir": f"{model_uri}/checkpoints",
        "resume": resume,
        "artifact_spec": {
            "model": model_spec,
            "label_names": m["label_names"],
            "input": data_input,
            "dataset": {"name": m["dataset"], "version": m["version"], "uri": data_uri},
            "model_name": cfg.train.model_name,
            "run_id": run_id,
        },
    }


def run(spark: SparkSession, cfg: Config, run_id: str | None = None) -> dict[str, Any]:
    import horovod.spark

    resume = run_id is not None
    run_id = run_id or lake.new_run_id()
    n = cfg.train.num_proc
    params = plan(cfg, run_id, n, resume=resume)
    log.info("training %s run %s on %d ranks, %d steps/epoch", cfg.train.model_name, run_id, n,
             params["steps_per_epoch"])
    from pipeline.trainer import train_rank

    results = horovod.spark.run(train_rank, args=(params,), num_proc=n, use_gloo=True,
                                stdout=sys.stdout, stderr=sys.stderr, verbose=0)
    metrics = results[0]
    return finish(cfg, params, metrics)


def finish(cfg: Config, params: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Driver side, after every rank returned: point _latest at the artifact."""
    uri = params["model_uri"]
    if not lake.exists(f"{uri}/model.pt"):
        raise RuntimeError(f"training finished but no artifact at {uri}")
    lake.set_latest(artifact.model_dir(cfg.lake.root, cfg.train.model_name, "").rstrip("/"), params["run_id"])
    log.info("test accuracy %.4f; model %s", metrics["test_accuracy"], uri)
    return {**metrics, "model_uri": uri}
