"""A real Spark standalone cluster on 127.0.0.1 for the tests (a master and two workers started
with spark-class), the jobs shipped to it as one ships to YARN or Kubernetes (scripts/package.sh),
and two watchers of its executors: one records which interpreter and libraries each Python
process under a worker used, one SIGKILLs an executor once a training wrote its first checkpoint.

The master and the workers run without the driver's virtualenv on their PATH and without
PYSPARK_PYTHON, so an executor that found its Python anywhere but in the archive would show up.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil

from conftest import ROOT, SPARK_CONF_DIR, TEST_JVM_OPTS, free_port, job_env

DRIVER_PREFIX = Path(sys.prefix)  # the driver's virtualenv: executors must never use it
JOB_TIMEOUT_S = 600


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
    env.update(SPARK_HOME=str(_spark_home()), SPARK_CONF_DIR=str(SPARK_CONF_DIR),
               SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_JAVA_OPTS=TEST_JVM_OPTS,
               # Every executor of every application unpacks the 1.4 GB environment: the workers
               # delete the directories of ended applications, as a long-running cluster does, so
               # a session leaves no 9 GB of them behind.
               SPARK_WORKER_OPTS="-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=5 "
                                 "-Dspark.worker.cleanup.appDataTtl=5")
    return env


def submit_env() -> dict[str, str]:
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


@contextmanager
def standalone(tmp: Path) -> Iterator[Cluster]:
    """A master and two 1-core, 3 GB workers on 127.0.0.1 under ``tmp``; stopped on exit."""
    port, webui = free_port(), free_port()
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
                                      "--webui-port", str(free_port()), "--work-dir", str(work)],
                   tmp / f"worker-{i}.log")
        _wait_for(c, "2 workers registered", lambda s: s.get("aliveworkers") == 2)
        print(f"\ncluster: master {c.master_url} + 2 workers up in {time.monotonic() - t0:.0f} s")
        yield c
    finally:
        c.stop()


def package() -> dict:
    """scripts/package.sh: dist/pipeline.zip and dist/env.tar.gz (the archive is cached)."""
    t0 = time.monotonic()
    p = subprocess.run(["bash", "scripts/package.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, f"scripts/package.sh exited {p.returncode}:\n{p.stderr[-4000:]}"
    took = time.monotonic() - t0
    print(f"\npackage: dist/pipeline.zip + dist/env.tar.gz in {took:.0f} s")
    return {"zip": ROOT / "dist" / "pipeline.zip", "env": ROOT / "dist" / "env.tar.gz", "seconds": took}


def spark_args(packaged: dict) -> list[str]:
    """spark-submit's flags for the cluster: the code and the environment shipped, one 1-core
    executor per worker (Horovod needs both task slots at once)."""
    return [
        "--py-files", str(packaged["zip"].relative_to(ROOT)),
        "--archives", f"{packaged['env'].relative_to(ROOT)}#env",
        "--conf", "spark.pyspark.python=./env/bin/python",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        "--conf", "spark.executor.cores=1", "--conf", "spark.cores.max=2",
        "--conf", "spark.executor.memory=2g", "--conf", "spark.task.cpus=1",
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.executor.extraJavaOptions={TEST_JVM_OPTS}",
    ]


@dataclass
class Seen:
    """One process observed under a worker's work directory."""
    job: str
    cwd: str
    argv: list[str]
    environ: dict[str, str]
    unpacked: bool  # the archive's env/pyvenv.cfg was in its directory (workers delete it once the application ends)
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
        if self.ident is not None:  # started
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
            s = self.seen[key] = Seen(self.job, cwd, argv, environ, os.path.isfile(f"{cwd}/env/pyvenv.cfg"))
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
        if self.ident is not None:  # started
            self.join(timeout=10)


