"""The three jobs on a real Spark standalone cluster on 127.0.0.1, shipped the way one ships to
YARN or Kubernetes: the code as ``--py-files dist/pipeline.zip``, the Python environment as
``--archives dist/env.tar.gz#env`` (both built by scripts/package.sh).

The master and the two 1-core workers run without the driver's virtualenv on their PATH and
without PYSPARK_PYTHON, so an executor that found its Python anywhere but in the archive would
show up. While the jobs run, a watcher samples /proc for every process under the workers' work
directories: which interpreter it was started with and which shared libraries (torch, horovod)
it mapped. That is how the tests know the Horovod ranks really ran from the shipped archive.

    source scripts/env.sh && python -m pytest -q -m cluster tests/test_cluster.py -s
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from conftest import DIGITS_EPOCHS as EPOCHS, ROOT, TEST_JVM_OPTS, job_env, spark_submit, write_sample
from pipeline.core import lake, manifest
from pipeline.core.config import load_config

pytestmark = pytest.mark.cluster
DATE = "2026-01-15"
# Its own name on the session's MLflow server, which other tests register digits-cnn on.
MODEL = "cluster-cnn"
DRIVER_PREFIX = Path(sys.prefix)  # the driver's virtualenv: executors must never use it
JOB_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _node_env() -> dict[str, str]:
    """What the master and workers see: no trace of the driver's virtualenv."""
    venv_bin = str(DRIVER_PREFIX / "bin")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != Path(venv_bin).resolve())
    env.update(SPARK_HOME=str(_spark_home()), SPARK_CONF_DIR=str(ROOT / "conf" / "spark"),
               SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_JAVA_OPTS=TEST_JVM_OPTS)
    return env


def _submit_env() -> dict[str, str]:
    """The driver's environment: the venv on PATH, but the Python of either side only via --conf."""
    env = job_env()
    env.pop("PYSPARK_PYTHON", None)
    env.pop("PYSPARK_DRIVER_PYTHON", None)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return env


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as e:
        return f"<{e}>"


@dataclass
class Cluster:
    master_url: str
    webui_url: str
    work_dirs: list[Path]
    procs: list[tuple[str, subprocess.Popen, Path]] = field(default_factory=list)

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=5) as r:
            return json.load(r)

    def check_alive(self) -> None:
        for name, p, log in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; its log ends:\n{_tail(log)}")

    def stop(self) -> None:
        """Workers first (they stop their executors), then the master; by process group."""
        for _, p, _ in reversed(self.procs):
            _killpg(p, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, p, _ in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(p, signal.SIGKILL)  # whatever is left in the group, e.g. an executor JVM
            p.wait(timeout=10)


def _killpg(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # started with start_new_session: pgid == pid
    except ProcessLookupError:
        pass


def _start(cluster: Cluster, name: str, args: list[str], log: Path) -> None:
    with open(log, "wb") as out:
        p = subprocess.Popen([str(_spark_home() / "bin" / "spark-class"), *args], env=_node_env(),
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    cluster.procs.append((name, p, log))


def _wait_for(cluster: Cluster, what: str, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        cluster.check_alive()
        try:
            if ready(cluster.state()):
                return
        except OSError as e:  # the web UI is not up yet
            last = e
        time.sleep(1)
    logs = "\n".join(f"--- {n}:\n{_tail(log, 1500)}" for n, _, log in cluster.procs)
    raise TimeoutError(f"Spark standalone: {what} not within {timeout:.0f} s ({last})\n{logs}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("standalone")
    port, webui = _free_port(), _free_port()
    c = Cluster(master_url=f"spark://127.0.0.1:{port}", webui_url=f"http://127.0.0.1:{webui}",
                work_dirs=[tmp / "worker-1", tmp / "worker-2"])
    t0 = time.monotonic()
    try:
        _start(c, "master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                             "--port", str(port), "--webui-port", str(webui)], tmp / "master.log")
        _wait_for(c, "master web UI", lambda s: s.get("status") == "ALIVE")
        for i, work in enumerate(c.work_dirs, 1):
            work.mkdir()
            _start(c, f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", c.master_url,
                                      "--cores", "1", "--memory", "3g", "--host", "127.0.0.1",
                                      "--webui-port", str(_free_port()), "--work-dir", str(work)],
                   tmp / f"worker-{i}.log")
        _wait_for(c, "2 workers registered", lambda s: s.get("aliveworkers") == 2)
        print(f"\ncluster: master {c.master_url} + 2 workers up in {time.monotonic() - t0:.0f} s")
        yield c
    finally:
        c.stop()


@dataclass
class Seen:
    """One process observed under a worker's work directory."""
    job: str
    cwd: str
    argv: list[str]
    environ: dict[str, str]
    libs: set[str] = field(default_factory=set)

    @property
    def interpreter(self) -> str:
        """The interpreter it was started with, as an absolute path (argv[0] may be relative)."""
        return os.path.normpath(os.path.join(self.cwd, self.argv[0]))

    @property
    def is_rank(self) -> bool:
        return "horovod.spark.task.gloo_exec_fn" in self.argv

    @property
    def is_python_worker(self) -> bool:
        return "pyspark.daemon" in self.argv or "pyspark.worker" in self.argv


class ExecutorWatch(threading.Thread):
    """Samples /proc: every Python process whose working directory is under a worker's work
    directory (an executor's), with its argv, environment and the .so files it has mapped."""

    def __init__(self, work_dirs: list[Path], interval: float = 0.2):
        super().__init__(daemon=True)
        self.roots = [str(w.resolve()) + os.sep for w in work_dirs]
        self.interval = interval
        self.job = "-"
        self.seen: dict[tuple[str, str], Seen] = {}  # (pid, start time) survives pid reuse
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        self._sample(pid)
                    except OSError:  # it ended while being read
                        pass
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def _sample(self, pid: str) -> None:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if not any(cwd.startswith(r) for r in self.roots):
            return
        key = (pid, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        s = self.seen.get(key)
        if s is None:
            argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            if not any("python" in Path(a).name for a in argv[:1]):
                return  # executor JVMs, shells
            environ = dict(kv.decode(errors="replace").split("=", 1)
                           for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
            s = self.seen[key] = Seen(self.job, cwd, argv, environ)
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and ".so" in parts[5]:
                s.libs.add(parts[5])

    def of(self, job: str) -> list[Seen]:
        return [s for s in self.seen.values() if s.job == job]


class ExecutorKill(threading.Thread):
    """Once the training under ``models`` has written its first checkpoint, SIGKILL one executor:
    its JVM and every process under it (Python workers, the Horovod rank), as a lost machine
    would take them. Spark's worker then starts a new executor for the application."""

    def __init__(self, models: Path, work_dirs: list[Path], timeout: float = JOB_TIMEOUT_S):
        super().__init__(daemon=True)
        self.models, self.deadline = models, time.monotonic() + timeout
        self.roots = [str(w.resolve()) + os.sep for w in work_dirs]  # this cluster's executors only
        self.killed: list[int] = []
        self._stop_event = threading.Event()

    def _ours(self, p: psutil.Process) -> bool:
        try:
            return ("CoarseGrainedExecutorBackend" in " ".join(p.cmdline())
                    and any(p.cwd().startswith(r) for r in self.roots))
        except psutil.Error:
            return False

    def run(self) -> None:
        while not self._stop_event.is_set() and time.monotonic() < self.deadline:
            if any(self.models.glob("*/checkpoints/epoch=0000.pt")):
                executors = [p for p in psutil.process_iter() if self._ours(p)]
                if executors:
                    doomed = [executors[0], *executors[0].children(recursive=True)]
                    for p in doomed:
                        try:
                            p.kill()
                        except psutil.NoSuchProcess:
                            pass
                    self.killed = [p.pid for p in doomed]
                    return
            self._stop_event.wait(0.1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


@pytest.fixture(scope="module")
def packaged():
    t0 = time.monotonic()
    p = subprocess.run(["bash", "scripts/package.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, f"scripts/package.sh exited {p.returncode}:\n{p.stderr[-4000:]}"
    took = time.monotonic() - t0
    print(f"\npackage: dist/pipeline.zip + dist/env.tar.gz in {took:.0f} s")
    return {"zip": ROOT / "dist" / "pipeline.zip", "env": ROOT / "dist" / "env.tar.gz", "seconds": took}


@pytest.fixture(scope="module")
def cluster_run(cluster, packaged, tmp_path_factory, mlflow_server):
    if not Path("/proc/self/maps").exists():
        pytest.skip("the executor watch reads /proc (Linux only)")
    root = tmp_path_factory.mktemp("lake")
    # the executors get nothing but the tracking URI (docs/cluster.md, "MLflow tracking on a cluster")
    conf = ["--config", "conf/digits.yaml", "--set", f"lake.root={root}", "--set", f"tracking.uri={mlflow_server}",
            "--set", f"train.model_name={MODEL}", "--set", f"score.model={MODEL}@latest", "--set", EPOCHS]
    write_sample("conf/digits.yaml", root, DATE)
    spark_args = [
        "--py-files", str(packaged["zip"].relative_to(ROOT)),
        "--archives", f"{packaged['env'].relative_to(ROOT)}#env",
        "--conf", "spark.pyspark.python=./env/bin/python",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        # one 1-core executor per worker: Horovod needs both task slots at once
        "--conf", "spark.executor.cores=1", "--conf", "spark.cores.max=2",
        "--conf", "spark.executor.memory=2g", "--conf", "spark.task.cpus=1",
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.executor.extraJavaOptions={TEST_JVM_OPTS}",
    ]
    watch = ExecutorWatch(cluster.work_dirs)
    watch.start()
    out, seconds = {"root": root, "watch": watch, "cluster": cluster}, {}
    # Training loses an executor early in its second epoch and restarts its ranks (train.max_restarts).
    kill = ExecutorKill(root / "models" / MODEL, cluster.work_dirs)
    try:
        for job, extra in (("preprocess", []), ("train", ["--set", "train.max_restarts=1"]),
                           ("score", ["--date", DATE])):
            watch.job = job
            t0 = time.monotonic()
            if job == "train":
                kill.start()
            out[job] = spark_submit(f"jobs/{job}.py", *conf, *extra, master=cluster.master_url,
                                    spark_args=spark_args, env=_submit_env(), timeout=JOB_TIMEOUT_S)
            seconds[job] = time.monotonic() - t0
            print(f"cluster: {job} took {seconds[job]:.0f} s")
    finally:
        watch.stop()
        kill.stop()
    out["executor_killed"] = kill.killed
    print("cluster: wall time " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f" (packaging {packaged['seconds']:.0f} s)")
    out["seconds"] = seconds
    out["cfg"] = load_config("conf/digits.yaml", [f"lake.root={root}", f"train.model_name={MODEL}", EPOCHS])
    out["tracking_uri"] = mlflow_server
    return out


def test_preprocess_manifest_reconciles(cluster_run):
    cfg = cluster_run["cfg"]
    uri = cfg.uri("curated", "digits", lake.get_latest(cfg.uri("curated", "digits")))
    m = manifest.read(uri)
    assert m["input_count"] == 1618 == m["output_count"] + m["quarantined_count"]
    assert sum(s["count"] for s in m["splits"].values()) == m["output_count"]
    for split in ("train", "val", "test"):
        assert pq.read_table(lake.local_path(f"{uri}/{split}")).num_rows == m["splits"][split]["count"]


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


def test_one_prediction_per_held_out_file(cluster_run):
    cfg = cluster_run["cfg"]
    part = cfg.uri("predictions", MODEL, f"dt={DATE}")
    t = pq.read_table(lake.local_path(part)).to_pandas()
    incoming = lake.listdir(cfg.resolve(cfg.dataset.score_source) + f"/dt={DATE}")
    assert len(incoming) == 179
    assert len(t) == 179 and t["path"].is_unique
    assert sorted(p.rsplit("/", 1)[1] for p in t["path"]) == sorted(incoming)
    m = manifest.read(part)
    assert m["input_count"] == 179 == m["output_count"] + m["quarantined_count"]


def _executor_dir(s: Seen) -> Path:
    """<work dir>/app-<id>/<executor id>: where Spark unpacked the archive for this executor."""
    cwd = Path(s.cwd)
    assert cwd.parent.name.startswith("app-"), f"{s.argv[:3]} ran in {cwd}, not in an executor's directory"
    return cwd


def _assert_from_the_archive(s: Seen, must_map: tuple[str, ...] = ()) -> None:
    env_dir = _executor_dir(s) / "env"
    what = f"{s.job}: {' '.join(s.argv[:3])} (pid in {s.cwd})"
    assert s.interpreter == str(env_dir / "bin" / "python"), f"{what} was started with {s.interpreter}"
    assert (env_dir / "pyvenv.cfg").is_file(), f"{what}: no unpacked archive at {env_dir}"
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
        _assert_from_the_archive(s, must_map=("libtorch_cpu", "horovod/torch/mpi_lib"))


def test_rank_0_on_an_executor_logs_to_the_tracking_server(cluster_run):
    from mlflow import MlflowClient

    cfg = cluster_run["cfg"]
    c = MlflowClient(tracking_uri=cluster_run["tracking_uri"], registry_uri=cluster_run["tracking_uri"])
    d = cfg.uri("models", MODEL, lake.get_latest(cfg.uri("models", MODEL)))
    train = manifest.read(d)
    assert train["metrics"]["epochs_tracked"] is True, "rank 0 did not log its epochs to the server"
    losses = c.get_metric_history(train["mlflow_run_id"], "train_loss")
    assert [m.step for m in losses] == list(range(cfg.train.epochs))
    assert c.get_model_version_by_alias(MODEL, "candidate").run_id == train["mlflow_run_id"]
    score = manifest.read(cfg.uri("predictions", MODEL, f"dt={DATE}"))
    assert c.get_run(score["mlflow_run_id"]).data.metrics["output_count"] == 179
