"""The three jobs on a real Spark standalone cluster on 127.0.0.1, shipped the way one ships to
YARN or Kubernetes: the code as ``--py-files dist/pipeline.zip``, the Python environment as
``--archives dist/env.tar.gz#env`` (both built by scripts/package.sh).

On the default profile this is the session's digits pipeline (conftest.digits_pipeline, which
test_e2e and test_tracking read too). The master and the two 1-core workers run without the
driver's virtualenv on their PATH and without PYSPARK_PYTHON, so an executor that found its
Python anywhere but in the archive would show up. While the jobs run, a watcher samples /proc for
every process under the workers' work directories: which interpreter it was started with and
which shared libraries (torch, horovod) it mapped. That is how the tests know the Horovod ranks
really ran from the shipped archive (tests/standalone.py).

    source scripts/env.sh && python -m pytest -q -m cluster tests/test_cluster.py -s
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import DIGITS_DATE as DATE
from pipeline.core import lake, manifest
from standalone import DRIVER_PREFIX, Seen

pytestmark = pytest.mark.cluster
MODEL = "digits-cnn"


@pytest.fixture(scope="module")
def cluster_run(digits_pipeline):
    if not digits_pipeline["on_cluster"]:
        pytest.skip("the digits pipeline ran on local[2]: the cluster needs Horovod (the default profile) and /proc")
    return digits_pipeline  # conftest.digits_pipeline: the session's one run of the digits jobs


def test_training_on_two_executors_reaches_accuracy(cluster_run):
    out = cluster_run["train"].stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("test accuracy:")]
    assert lines, out[-3000:]
    assert float(lines[-1].split()[2]) >= 0.95, out[-3000:]
    epoch_lines = [ln for ln in out.splitlines() if " train: epoch " in ln]
    assert len(epoch_lines) == cluster_run["cfg"].train.epochs and all(ln.startswith("[0]") for ln in epoch_lines)
    cfg = cluster_run["cfg"]
    d = cfg.uri("models", MODEL, lake.get_latest(cfg.uri("models", MODEL)))
    metrics = lake.read_json(f"{d}/metrics.json")
    assert metrics["test_accuracy"] >= 0.95 and metrics["world_size"] == 2
    # An executor died in epoch 2: the job restarted its ranks once, from the checkpoint, and exited 0.
    assert cluster_run["executor_killed"], "training finished before an executor could be killed"
    assert manifest.read(d)["restarts"] == 1


def _executor_dir(s: Seen) -> Path:
    """<work dir>/app-<id>/<executor id>: where Spark unpacked the archive for this executor."""
    cwd = Path(s.cwd)
    assert cwd.parent.name.startswith("app-"), f"{s.argv[:3]} ran in {cwd}, not in an executor's directory"
    return cwd


def _assert_from_the_archive(s: Seen, must_map: tuple[str, ...] = ()) -> None:
    env_dir = _executor_dir(s) / "env"
    what = f"{s.job}: {' '.join(s.argv[:3])} (pid in {s.cwd})"
    assert s.interpreter == str(env_dir / "bin" / "python"), f"{what} was started with {s.interpreter}"
    assert s.unpacked, f"{what}: no unpacked archive at {env_dir}"
    from_driver = sorted(lib for lib in s.libs if lib.startswith(str(DRIVER_PREFIX) + os.sep))
    assert not from_driver, f"{what} mapped libraries from the driver's virtualenv: {from_driver[:5]}"
    for name in must_map:
        hits = [lib for lib in s.libs if name in lib]
        assert hits, f"{what} never mapped {name}"
        assert all(lib.startswith(str(env_dir) + os.sep) for lib in hits), f"{what} mapped {hits} outside {env_dir}"
    path = s.environ.get("PATH", "").split(os.pathsep)
    assert str(DRIVER_PREFIX / "bin") not in path, f"{what}: the driver's venv is on the executor's PATH"


def test_executors_python_comes_from_the_archive(cluster_run):
    watch = cluster_run["watch"]
    for job in ("preprocess", "score"):
        workers = [s for s in watch.of(job) if s.is_python_worker]
        assert workers, f"{job}: no Python worker seen under {watch.roots}"
        for s in workers:
            _assert_from_the_archive(s)
    # the scoring UDF loads the model: its torch must be the archive's
    scorers = [s for s in watch.of("score") if any("libtorch_cpu" in lib for lib in s.libs)]
    assert scorers, "score: no Python worker mapped libtorch_cpu"
    for s in scorers:
        _assert_from_the_archive(s, must_map=("libtorch_cpu",))


def test_training_ranks_ran_from_the_archive(cluster_run):
    ranks = [s for s in cluster_run["watch"].of("train") if s.is_rank]
    assert ranks, "train: no Horovod rank process (horovod.spark.task.gloo_exec_fn) seen on the executors"
    by_rank = {s.environ.get("HOROVOD_RANK"): s for s in ranks}
    assert sorted(by_rank) == ["0", "1"], [(s.environ.get("HOROVOD_RANK"), s.cwd) for s in ranks]
    # one rank per worker, each in its own executor directory
    workers = {next(r for r in cluster_run["watch"].roots if s.cwd.startswith(r)) for s in by_rank.values()}
    assert len(workers) == 2, [s.cwd for s in by_rank.values()]
    for s in ranks:
        assert not s.interpreter.startswith(str(DRIVER_PREFIX) + os.sep), (
            f"rank {s.environ.get('HOROVOD_RANK')} ran the driver's interpreter {s.interpreter}, which does not "
            "exist on a real cluster's executors: horovod.spark.run starts ranks with the driver's sys.executable "
            "unless given executable=. pipeline/train.py should pass executable=spark.sparkContext.pythonExec "
            "(here ./env/bin/python) and env={'PYTHONPATH': <basenames of spark.submit.pyFiles>}, without which "
            "the archive's interpreter cannot import pipeline (docs/cluster.md, 'Horovod ranks on the executors')")
        _assert_from_the_archive(s)
    # Each rank trained with the archive's torch and Horovod. Not every rank process gets that far:
    # the executor kill fails the launch, and a rank torn down while it starts has loaded neither.
    for rank in by_rank:
        trained = [s for s in ranks if s.environ.get("HOROVOD_RANK") == rank
                   and any("horovod/torch/mpi_lib" in lib for lib in s.libs)]  # imported after torch
        assert trained, f"train: no process of rank {rank} mapped horovod/torch/mpi_lib"
        for s in trained:
            _assert_from_the_archive(s, must_map=("libtorch_cpu", "horovod/torch/mpi_lib"))


def test_rank_0_on_an_executor_logs_to_the_tracking_server(cluster_run):
    from mlflow import MlflowClient

    cfg = cluster_run["cfg"]
    c = MlflowClient(tracking_uri=cluster_run["uri"], registry_uri=cluster_run["uri"])
    d = cfg.uri("models", MODEL, lake.get_latest(cfg.uri("models", MODEL)))
    train = manifest.read(d)
    assert train["metrics"]["epochs_tracked"] is True, "rank 0 did not log its epochs to the server"
    losses = c.get_metric_history(train["mlflow_run_id"], "train_loss")
    assert [m.step for m in losses] == list(range(cfg.train.epochs))
    assert c.get_model_version_by_alias(MODEL, "candidate").run_id == train["mlflow_run_id"]
    score = manifest.read(cfg.uri("predictions", MODEL, f"dt={DATE}"))
    assert c.get_run(score["mlflow_run_id"]).data.metrics["output_count"] == 179
