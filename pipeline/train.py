"""Stage 2: curated Parquet -> trained model artifact.

Resolves the dataset version, plans the run (steps per epoch, learning rate, model spec,
backend, reader), then launches ``trainer.train_rank`` with one of four launchers:

- ``run``: ``train.num_proc`` ranks on Spark tasks, started by ``horovod.spark.run`` for the
  Horovod backend or by Spark's ``TorchDistributor`` for the torch (DDP) backend;
- ``run_horovodrun``: every process started by ``horovodrun -np N``;
- ``run_torchrun``: every process started by ``torchrun --nproc_per_node N``;
- ``run_local``: this process alone, world size 1, for debugging.

With ``train.max_restarts`` a dead rank does not end the run: the Spark launcher launches again
and the local launcher restarts its rank's child process, both resuming from the last checkpoint
(pipeline/core/restarts.py); torchrun restarts its ranks itself, and they find their run again
by torchrun's run id.

Rank 0 writes the artifact; ``_latest`` moves to it only once training has finished. One training
of a model at a time: the driver (spark, local) or rank 0 (horovodrun, torchrun) holds the model's
lock (pipeline/core/locks.py) from before the plan until ``_latest`` has moved.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from typing import Any, Callable, Iterator

from pipeline import kinds
from pipeline.model import artifact, objectives
from pipeline.training import distributed, feed, schedule
from pipeline.training.params import RankParams
from pipeline.core import lake, locks, manifest, privacy
from pipeline.core.restarts import RankDied, retry
from pipeline.ops import tracking
from pipeline.core.config import Config, ConfigError
from pipeline.core.layout import LakeLayout

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training returns (rank 0; the other ranks of horovodrun and torchrun return None)."""
    run_id: str
    model_uri: str
    metrics: dict[str, Any]  # rank 0's metrics.json: test_<metric>, monitor, world_size, steps, ranks, ...
    restarts: int            # launches after a rank died (train.max_restarts)
    mlflow_run_id: str | None
    registry: dict[str, Any] | None  # the registered version and its alias, where tracked
    cost: dict[str, Any] | None

    def test_metrics(self) -> dict[str, float]:
        """test_<metric>: value, the monitored metric first."""
        first = self.metrics["monitor"].replace("val_", "test_", 1)
        found = {k: v for k, v in self.metrics.items() if k.startswith("test_") and isinstance(v, float)}
        return {k: found[k] for k in sorted(found, key=lambda k: k != first)}


class TrainingSetupError(ValueError):
    pass


def resolve_dataset(cfg: Config) -> tuple[str, dict[str, Any]]:
    """(dataset uri, its preprocess manifest) for train.dataset_version."""
    layout = LakeLayout.of(cfg)
    parent = layout.curated_root(cfg.dataset.name)
    version = cfg.train.dataset_version
    if version == "latest":
        version = lake.get_latest(parent)
    uri = layout.curated_version(cfg.dataset.name, version)
    if not lake.exists(f"{uri}/{manifest.MANIFEST}"):
        raise TrainingSetupError(f"dataset version {version} not found or incomplete at {uri}; "
                                 f"versions: {[v for v in lake.listdir(parent) if v.startswith('v=')]}")
    return uri, manifest.read(uri)


def plan(cfg: Config, run_id: str, world_size: int, resume: bool = False) -> RankParams:
    """The plain-value parameters every rank receives."""
    data_uri, m = resolve_dataset(cfg)
    kind = kinds.get(m["kind"])
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
    try:
        kind.check_task(cfg.train.task)
        data_input, shape = kind.input_spec(m)
        task_info = objectives.task_info(cfg.train, m, kind.outputs(m))
        objective = objectives.for_task(cfg.train.task, task_info)
        model_spec = objectives.model_spec(cfg.train, kind, shape, objective)
    except (objectives.TaskSetupError, ValueError) as e:
        raise TrainingSetupError(str(e)) from None
    layout = LakeLayout.of(cfg)
    model_uri = layout.model_run(cfg.train.model_name, run_id)
    t = vars(cfg.train).copy()
    t["augment"] = dataclasses.asdict(cfg.train.augment) if kind.augmentable else {}
    if t["init_weights"]:  # a local path, or a URI (relative: under lake.root)
        t["init_weights"] = "file://" + t["init_weights"] if t["init_weights"].startswith("/") else cfg.resolve(t["init_weights"])
    t["backend"] = distributed.default_backend() if t["backend"] == "auto" else t["backend"]
    t["privacy"] = _dp(cfg, t["backend"], train_rows, world_size)
    if cfg.tracking.enabled:  # the MLflow model's input example is scored when it is logged: hashing needs the key
        privacy.of(m.get("privacy"))
    t["reader"] = feed.default_reader() if t["reader"] == "auto" else t["reader"]
    monitor = objective.default_monitor if t["monitor"] == "auto" else t["monitor"]
    known = ["train_loss", *(f"train_{k}" for k in objective.train_names),
             *(f"val_{k}" for k in objective.metric_names)]
    if monitor not in known:
        raise TrainingSetupError(f"train.monitor={monitor!r} is not a metric of {cfg.train.task}; use one of {known}")
    return RankParams(
        run_id=run_id,
        train=t,
        task_info=task_info,
        monitor=monitor,
        config=cfg.to_dict(),
        model_spec=model_spec,
        input=data_input,
        train_url=m["splits"]["train"]["uri"],
        val_url=m["splits"]["val"]["uri"],
        test_url=m["splits"]["test"]["uri"],
        steps_per_epoch=schedule.steps_per_epoch(train_rows, cfg.train.batch_size, world_size),
        model_uri=model_uri,
        checkpoint_dir=layout.checkpoints(cfg.train.model_name, run_id),
        resume=resume,
        artifact_spec={
            "model": model_spec.as_dict(),
            "label_names": m["label_names"],
            "task": {"name": objective.name, "info": task_info},
            "input": data_input,
            "dataset": {"name": m["dataset"], "version": m["version"], "uri": data_uri},
            "model_name": cfg.train.model_name,
            "run_id": run_id,
        },
    )


def _dp(cfg: Config, backend: str, train_rows: int, world_size: int) -> dict[str, Any]:
    """train.privacy for the ranks, with the sampling rate its accountant uses (pipeline/training/dp.py)."""
    dp = dataclasses.asdict(cfg.train.privacy)
    if not dp["noise_multiplier"]:
        return dp
    if backend != "torch":
        raise ConfigError(f"train.privacy: DP-SGD runs on train.backend=torch (Opacus), not {backend}; "
                          f"set train.backend=torch")
    if cfg.train.fp16_allreduce:
        raise ConfigError("train.privacy: DP-SGD averages the noised gradients itself; set train.fp16_allreduce=false")
    return {**dp, "sample_rate": min(1.0, cfg.train.batch_size * world_size / train_rows)}


def _one_at_a_time(cfg: Config):
    """One training run of the model at a time (pipeline/core/locks.py)."""
    return locks.output_lock(LakeLayout.of(cfg).train_lock(cfg.train.model_name), f"model {cfg.train.model_name}",
                             cfg.lake.lock_wait_s)


@contextmanager
def _held_by_rank_0(cfg: Config, rank: int, share: Callable[[str | None], str | None]) -> Iterator[None]:
    """The model's lock for ranks a launcher started (horovodrun, torchrun): rank 0, which
    publishes, takes it once for the whole run; ``share`` (a broadcast from rank 0) tells every
    rank whether it did, so a busy model stops them all with OutputBusy (exit 5) before training."""
    with ExitStack() as held:
        busy = None
        if rank == 0:
            try:
                held.enter_context(_one_at_a_time(cfg))
            except locks.OutputBusy as e:
                busy = str(e)
        busy = share(busy)
        if busy is not None:
            raise locks.OutputBusy(busy)
        yield


def run(spark, cfg: Config, run_id: str | None = None) -> TrainResult:
    """Launcher 1: ranks on the Spark executors (the default under spark-submit)."""
    with _one_at_a_time(cfg):
        return _run_on_spark(spark, cfg, run_id)


def _run_on_spark(spark, cfg: Config, run_id: str | None) -> TrainResult:
    resume = run_id is not None
    run_id = run_id or lake.new_run_id()
    n = cfg.train.num_proc
    params = plan(cfg, run_id, n, resume=resume)
    backend = params.train["backend"]
    log.info("training %s run %s on %d Spark tasks (%s, %s reader), %d steps/epoch", cfg.train.model_name, run_id,
             n, backend, params.train["reader"], params.steps_per_epoch)
    with _start_tracking(cfg, spark, params, "spark", n) as job:
        # A rank (or its executor) that dies fails the whole launch: launch again, resuming.
        metrics, restarts = retry(lambda k: _launch_on_spark(spark, cfg, _resuming(params, k)),
                                  cfg.train.max_restarts, f"training run {run_id}")
        if metrics is None:  # TorchDistributor returns rank 0's result
            raise RuntimeError(f"training run {run_id}: rank 0 returned no metrics")
        return finish(cfg, params, metrics, job, restarts)


def _resuming(params: RankParams, restarts: int) -> RankParams:
    """The parameters of a restart: from the run's last checkpoint (none yet: from the start)."""
    return dataclasses.replace(params, resume=True) if restarts else params


def _launch_on_spark(spark, cfg: Config, params: RankParams) -> dict[str, Any] | None:
    """One launch of ``train_rank`` on ``train.num_proc`` Spark tasks; rank 0's metrics."""
    from pipeline.training.trainer import train_rank

    n = cfg.train.num_proc
    if params.train["backend"] == "torch":
        from pyspark.ml.torch.distributor import TorchDistributor

        # Barrier tasks on the executors, each running torchrun for one rank; returns rank 0's result.
        return TorchDistributor(num_processes=n, local_mode=False, use_gpu=cfg.train.device == "cuda").run(
            train_rank, params)
    import horovod.spark

    # horovod starts each rank as a new process on the executor, by default with the driver's
    # interpreter, which does not exist there on a real cluster. Give the ranks the executors'
    # interpreter (./env/bin/python with --archives) and the --py-files, which Spark puts in
    # the executor's working directory but not on a child process's PYTHONPATH.
    py_files = [os.path.basename(f) for f in spark.conf.get("spark.submit.pyFiles", "").split(",") if f]
    return horovod.spark.run(train_rank, args=(params,), num_proc=n, use_gloo=True,
                             stdout=sys.stdout, stderr=sys.stderr, verbose=0,
                             executable=spark.sparkContext.pythonExec,
                             env={"PYTHONPATH": os.pathsep.join(py_files)} if py_files else None)[0]


def run_horovodrun(cfg: Config, run_id: str | None = None) -> TrainResult | None:
    """Launcher 2: every process started by ``horovodrun -np N`` calls this; no Spark involved."""
    import horovod.torch as hvd

    from pipeline.training.trainer import train_rank

    if cfg.train.max_restarts:
        # horovodrun restarts ranks only in its elastic mode, which this training loop is not written for.
        raise ConfigError(f"train.max_restarts={cfg.train.max_restarts}: horovodrun cannot restart the ranks of "
                          f"this job; set it to 0 here, or launch with spark-submit or torchrun --max-restarts")
    hvd.init()
    with _held_by_rank_0(cfg, hvd.rank(), lambda busy: hvd.broadcast_object(busy, root_rank=0, name="lock")):
        resume = run_id is not None
        run_id = hvd.broadcast_object(run_id or lake.new_run_id(), root_rank=0, name="run_id")
        params = plan(cfg, run_id, hvd.size(), resume=resume)
        if hvd.rank() == 0:
            log.info("training %s run %s on %d horovodrun ranks, %d steps/epoch", cfg.train.model_name, run_id,
                     hvd.size(), params.steps_per_epoch)
        with _start_tracking(cfg, None, params, "horovodrun", hvd.size()) if hvd.rank() == 0 else nullcontext() as job:
            metrics = train_rank(params)
            return finish(cfg, params, metrics, job) if metrics["rank"] == 0 else None


def run_torchrun(cfg: Config, run_id: str | None = None) -> TrainResult | None:
    """Launcher 3: every process started by ``torchrun --nproc_per_node N`` calls this; no Spark."""
    import torch.distributed as td

    from pipeline.training.trainer import train_rank

    # torchrun restarts every rank when one dies, up to its own --max-restarts.
    allowed = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if cfg.train.max_restarts and cfg.train.max_restarts != allowed:
        raise ConfigError(f"train.max_restarts={cfg.train.max_restarts} but torchrun was started with --max-restarts "
                          f"{allowed}, and torchrun does the restarting: start it with --max-restarts "
                          f"{cfg.train.max_restarts}")
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    dist = distributed.init("torch", cfg.train.device)  # the group train_rank then joins

    def share(value: Any) -> Any:
        box = [value]
        td.broadcast_object_list(box, src=0)
        return box[0]

    with _held_by_rank_0(cfg, dist.rank, share):
        run_id, resume = share(_torchrun_run(cfg, run_id, restarts) if dist.rank == 0 else None)
        params = plan(cfg, run_id, dist.size, resume=resume)
        if params.train["backend"] != "torch":
            raise TrainingSetupError("torchrun starts torch.distributed ranks: use --set train.backend=torch (or auto)")
        if dist.rank == 0:
            log.info("training %s run %s on %d torchrun ranks, %d steps/epoch", cfg.train.model_name, run_id,
                     dist.size, params.steps_per_epoch)
        with _start_tracking(cfg, None, params, "torchrun", dist.size) if dist.rank == 0 else nullcontext() as job:
            metrics = train_rank(params)
            return finish(cfg, params, metrics, job, restarts) if metrics["rank"] == 0 else None


def _torchrun_run(cfg: Config, run_id: str | None, restarts: int) -> tuple[str, bool]:
    """(run id, resume) on torchrun's rank 0. A restart resumes the run its torchrun job (named by
    TORCHELASTIC_RUN_ID) trains; a first start trains --resume's run or a new one, recorded for it."""
    pointer = LakeLayout.of(cfg).elastic_run(cfg.train.model_name, os.environ.get("TORCHELASTIC_RUN_ID", "none"))
    if restarts and lake.exists(pointer):
        return lake.read_json(pointer)["run_id"], True
    resume = run_id is not None
    run_id = run_id or lake.new_run_id()
    lake.write_json(pointer, {"run_id": run_id})
    return run_id, resume


def run_local(cfg: Config, run_id: str | None = None) -> TrainResult:
    """Launcher 4: one process, world size 1, for debugging (pdb and print work)."""
    with _one_at_a_time(cfg):
        return _run_local(cfg, run_id)


def _run_local(cfg: Config, run_id: str | None) -> TrainResult:
    from pipeline.training.trainer import train_rank

    resume = run_id is not None
    run_id = run_id or lake.new_run_id()
    params = plan(cfg, run_id, 1, resume=resume)
    log.info("training %s run %s in-process (size 1), %d steps/epoch", cfg.train.model_name, run_id,
             params.steps_per_epoch)
    with _start_tracking(cfg, None, params, "local", 1) as job:
        if cfg.train.max_restarts:
            metrics, restarts = retry(lambda k: _rank_in_child(_resuming(params, k)), cfg.train.max_restarts,
                                      f"training run {run_id}", retry_on=(RankDied,))
        else:
            metrics, restarts = train_rank(params), 0
        return finish(cfg, params, metrics, job, restarts)


def _rank_in_child(params: RankParams) -> dict[str, Any]:
    """``train_rank`` in a child process, a fresh interpreter (spawn); RankDied when it ends
    without a result. An error it reports is raised here, and not restarted: it would recur."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_rank, args=(params, send), name="train rank 0")
    child.start()
    send.close()  # the child holds the only sending end now: its death reads as EOF here
    try:
        try:
            ok, value = receive.recv()
        except EOFError:
            child.join()
            raise RankDied(f"the rank's process {child.pid} ended without a result "
                           f"(exit code {child.exitcode})") from None
        child.join()
    finally:
        if child.is_alive():  # this job is being stopped (SIGTERM): so is its rank
            child.terminate()
            child.join()
    if not ok:
        raise RuntimeError(value)
    return value


def _child_rank(params: RankParams, send) -> None:
    from pipeline.training.trainer import train_rank

    result: tuple[bool, Any]
    try:
        result = (True, train_rank(params))
    except Exception as e:  # noqa: BLE001 - reported to the launcher, which raises it
        log.exception("the rank failed")
        result = (False, f"{type(e).__name__}: {e}")
    send.send(result)


def finish(cfg: Config, params: RankParams, metrics: dict[str, Any],
           job: tracking.Job | None = None, restarts: int = 0) -> TrainResult:
    """After training: check every rank ran the same steps, point _latest at the artifact."""
    steps = {r["rank"]: r["steps_run"] for r in metrics["ranks"]}
    if len(set(steps.values())) != 1:
        raise RuntimeError(f"ranks ran different numbers of steps: {steps}")
    uri = params.model_uri
    if not lake.exists(f"{uri}/model.pt"):
        raise RuntimeError(f"training finished but no artifact at {uri}")
    lake.set_latest(LakeLayout.of(cfg).models_root(cfg.train.model_name), params.run_id)
    log.info("%s; model %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                       if k.startswith("test_") and isinstance(v, float)), uri)
    m = _finish_tracking(job, cfg, params, metrics, restarts) if job is not None else {}
    return TrainResult(run_id=params.run_id, model_uri=uri, metrics=metrics, restarts=restarts,
                       mlflow_run_id=m.get("mlflow_run_id"), registry=m.get("registry"), cost=m.get("cost"))


# --- MLflow ------------------------------------------------------------------------------------

ARTIFACT_FILES = ("training_curve.png", "confusion_matrix.png", "metrics.json", "history.json", "model.json",
                  "config.json")


def _start_tracking(cfg: Config, spark, params: RankParams, launcher: str, world_size: int) -> tracking.Job:
    """The training run, started on the driver (or horovodrun's rank 0) before the ranks start;
    ``params.tracking`` lets rank 0 attach to it (``Tracker.attach``) and log every epoch."""
    ds = params.artifact_spec["dataset"]
    # Every launcher holds the model's lock here (on the driver, or on rank 0 of horovodrun and
    # torchrun): a RUNNING run of the model left by a killed job is marked FAILED. A resumed run
    # continues its MLflow run.
    job = tracking.Job(cfg, spark, "train", f"train {cfg.train.model_name} {params.run_id}", params=cfg.to_dict(), tags={
        "dataset": ds["name"], "dataset_version": ds["version"], "world_size": world_size, "launcher": launcher,
        "model_name": cfg.train.model_name, "lake_run_id": params.run_id},
        output={"model_name": cfg.train.model_name},
        resume={"lake_run_id": params.run_id} if params.resume else None)
    params.tracking = {"settings": job.tracker.s, "run_id": job.run_id}
    return job


def _finish_tracking(job: tracking.Job, cfg: Config, params: RankParams, metrics: dict[str, Any],
                     restarts: int) -> dict[str, Any]:
    """After rank 0 wrote the artifact: the epochs (unless rank 0 logged them as they ran), final
    metrics, artifacts and the model (registered, alias ``candidate``) go to the run; the training
    manifest (``models/<name>/<run id>/_manifest.json``) records the run id and the cost."""
    uri, t = params.model_uri, job.tracker
    if not metrics.get("epochs_tracked"):
        for rec in lake.read_json(f"{uri}/history.json"):
            t.log_epoch(rec)
    t.set_tags({"device": metrics.get("device", "")})
    # Final metrics: test_<metric> as they are; the best epoch's val_<metric> as best_val_<metric>,
    # apart from the per-epoch val_<metric> series; run means as mean_<name>.
    t.log_metrics({k: v for k, v in metrics.items() if k.startswith("test_")})
    t.log_metrics({f"best_{k}": v for k, v in metrics.items() if k.startswith("val_")})
    t.log_metrics({k: metrics[k] for k in ("best_epoch", "epochs_run", "dp_epsilon") if k in metrics})
    t.log_metrics({f"mean_{k}": metrics[k] for k in ("samples_per_s", "data_wait_fraction") if k in metrics})
    t.log_metrics({"restarts": restarts})
    for name in ARTIFACT_FILES:
        if lake.exists(f"{uri}/{name}"):
            t.log_file(name, lake.read_bytes(f"{uri}/{name}"))
    ds = params.artifact_spec["dataset"]
    dataset_manifest = manifest.read(ds["uri"])
    t.log_json("preprocess_manifest.json", dataset_manifest)
    version = t.register_model(cfg.train.model_name, partial(_log_model, cfg=cfg, lake_run_id=params.run_id))
    rows = sum(s["count"] for s in dataset_manifest["splits"].values())
    ranks = metrics.get("ranks") or []
    gpu_s = sum(r.get("wall_s", 0.0) for r in ranks) if str(metrics.get("device", "")).startswith("cuda") else None
    m = manifest.build(
        "train", params.run_id, cfg.to_dict(), input_count=rows, output_count=rows, quarantined_by_reason={},
        dataset={**ds, "mlflow_run_id": dataset_manifest.get("mlflow_run_id")}, uri=uri,
        metrics={k: v for k, v in metrics.items() if k not in ("ranks",)},
        registry={"name": cfg.train.model_name, "version": version, "alias": tracking.CANDIDATE} if version else None,
        restarts=restarts,
        **job.fields(ranks=ranks, gpu_s=gpu_s),
    )
    manifest.write(uri, m)
    job.finish(m)
    return m


def _log_model(tracking_uri: str, mlflow_run_id: str, cfg: Config, lake_run_id: str) -> str:
    from pipeline.scoring import serving  # MLflow's pyfunc: only where tracking is on

    return serving.log_model(tracking_uri, mlflow_run_id, cfg.lake.root, cfg.train.model_name, lake_run_id)
