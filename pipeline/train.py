"""Stage 2: curated Parquet -> trained model artifact.

Resolves the dataset version, plans the run (steps per epoch, learning rate, model spec),
then launches ``trainer.train_rank`` with one of three launchers: on ``train.num_proc`` Spark
tasks with ``horovod.spark.run`` (``run``), under ``horovodrun -np N`` (``run_horovodrun``), or
in this process at world size 1 (``run_local``). Rank 0 writes the artifact; ``_latest`` moves
to it only once training has finished.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pyspark.sql import SparkSession

from pipeline import artifact, lake, manifest, schedule, tracking
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
    """Launcher 1: ranks on the Spark executors (the default under spark-submit)."""
    import horovod.spark

    from pipeline.trainer import train_rank

    resume = run_id is not None
    run_id = run_id or lake.new_run_id()
    n = cfg.train.num_proc
    params = plan(cfg, run_id, n, resume=resume)
    log.info("training %s run %s on %d Spark tasks, %d steps/epoch", cfg.train.model_name, run_id, n,
             params["steps_per_epoch"])
    # horovod starts each rank as a new process on the executor, by default with the driver's
    # interpreter, which does not exist there on a real cluster. Give the ranks the executors'
    # interpreter (./env/bin/python with --archives) and the --py-files, which Spark puts in
    # the executor's working directory but not on a child process's PYTHONPATH.
    py_files = [os.path.basename(f) for f in spark.conf.get("spark.submit.pyFiles", "").split(",") if f]
    job = tracking.start_training(cfg, spark, params, "spark", n)
    try:
        results = horovod.spark.run(train_rank, args=(params,), num_proc=n, use_gloo=True,
                                    stdout=sys.stdout, stderr=sys.stderr, verbose=0,
                                    executable=spark.sparkContext.pythonExec,
                                    env={"PYTHONPATH": os.pathsep.join(py_files)} if py_files else None)
        _check_ranks_agree(results)
    except BaseException:
        job.fail()
        raise
    return finish(cfg, params, results[0], results, job)


def run_horovodrun(cfg: Config, run_id: str | None = None) -> dict[str, Any] | None:
    """Launcher 2: every process started by ``horovodrun -np N`` calls this; no Spark involved."""
    import horovod.torch as hvd

    from pipeline.trainer import train_rank

    hvd.init()
    resume = run_id is not None
    run_id = hvd.broadcast_object(run_id or lake.new_run_id(), root_rank=0, name="run_id")
    params = plan(cfg, run_id, hvd.size(), resume=resume)
    if hvd.rank() == 0:
        log.info("training %s run %s on %d horovodrun ranks, %d steps/epoch", cfg.train.model_name, run_id,
                 hvd.size(), params["steps_per_epoch"])
    job = tracking.start_training(cfg, None, params, "horovodrun", hvd.size()) if hvd.rank() == 0 else None
    metrics = train_rank(params)
    return finish(cfg, params, metrics, job=job) if metrics["rank"] == 0 else None


def run_local(cfg: Config, run_id: str | None = None) -> dict[str, Any]:
    """Launcher 3: one process, world size 1, for debugging (pdb and print work)."""
    from pipeline.trainer import train_rank

    resume = run_id is not None
    run_id = run_id or lake.new_run_id()
    params = plan(cfg, run_id, 1, resume=resume)
    log.info("training %s run %s in-process (size 1), %d steps/epoch", cfg.train.model_name, run_id,
             params["steps_per_epoch"])
    job = tracking.start_training(cfg, None, params, "local", 1)
    try:
        metrics = train_rank(params)
    except BaseException:
        job.fail()
        raise
    return finish(cfg, params, metrics, job=job)


def _check_ranks_agree(results: list[dict[str, Any]]) -> None:
    steps = {r["rank"]: r["steps_run"] for r in results}
    if len(set(steps.values())) != 1:
        raise RuntimeError(f"ranks ran different numbers of steps: {steps}")


def finish(cfg: Config, params: dict[str, Any], metrics: dict[str, Any],
           ranks: list[dict[str, Any]] | None = None, job: tracking.Job | None = None) -> dict[str, Any]:
    """After training: point _latest at the artifact; return rank 0's metrics (+ per-rank accounting)."""
    uri = params["model_uri"]
    if not lake.exists(f"{uri}/model.pt"):
        raise RuntimeError(f"training finished but no artifact at {uri}")
    lake.set_latest(f"{cfg.lake.root}/models/{cfg.train.model_name}", params["run_id"])
    log.info("test accuracy %.4f; model %s", metrics["test_accuracy"], uri)
    accounting = [{k: r[k] for k in ("rank", "steps_run", "rows_read")} for r in (ranks or [metrics])]
    m = tracking.finish_training(job, cfg, params, metrics, ranks) if job is not None else {}
    return {**metrics, "model_uri": uri, "ranks": accounting, "mlflow_run_id": m.get("mlflow_run_id"),
            "registry": m.get("registry"), "cost": m.get("cost")}
