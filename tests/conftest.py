"""Shared fixtures: one Spark session, one MLflow server, one way to run a job through
spark-submit, and each sample pipeline run through spark-submit once per test session."""
import io
import os
import subprocess
import sys
import time
import warnings
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=FutureWarning)

# The tests' JVMs live for seconds and see tiny data, so most of their CPU goes to the C2 JIT
# compiler and the parallel collector's threads, not to the work. C1 only and the serial
# collector cut a job's CPU time by about a third here. Every JVM the tests start inherits them:
# the session's, each spark-submit's driver (SPARK_SUBMIT_OPTS), and the standalone cluster's
# daemons and executors (tests/test_cluster.py). Jobs outside the tests keep the JVM's defaults.
TEST_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

# Class-data sharing (AppCDS): the classes a Spark job loads are archived once per Java and Spark
# build, under the stacks' cache, and every later JVM maps them instead of loading and verifying
# them again: a job's start-up falls from about 8 to 5 CPU-seconds here. The JVM will not share
# classes with a non-empty directory on the class path, so the tests' JVMs take SPARK_CONF_DIR
# from an empty directory and log4j's configuration from conf/spark by name: the same logging.
# A JVM whose class path differs from the archive's (Spark 4 started from the default profile's
# tests) ignores it, silently.
SPARK_CONF = ROOT / "conf" / "spark"
# What the archive holds: the classes of a job like the tests' (SQL, Parquet, Arrow to pandas and
# back, an RDD). Not Hive's: with its Derby metastore's classes archived too, Derby fails to
# create a table ("getSQLState() is null"); those classes load as usual.
CLASS_ARCHIVE_JOB = """
import sys
from pyspark.sql import SparkSession, functions as F
s = SparkSession.builder.getOrCreate()
df = s.range(100).withColumn("k", F.col("id") % 3).withColumn("t", F.concat(F.lit("x"), F.col("id")))
df.write.mode("overwrite").parquet(sys.argv[1] + "/parquet")
back = s.read.parquet(sys.argv[1] + "/parquet").mapInPandas(lambda it: it, "id long, k long, t string")
back.groupBy("k").agg(F.count("*")).collect()
s.sparkContext.parallelize(range(10), 2).map(lambda x: x).count()
s.stop()
"""


def _with_class_sharing(opts: str) -> tuple[Path, str]:
    """(the tests' SPARK_CONF_DIR, their JVM options): with the class archive where one exists or
    this process (pytest, or xdist's controller before it starts its workers) can build it;
    conf/spark and ``opts`` unchanged where it cannot."""
    import hashlib
    import tempfile

    import pyspark

    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    try:
        version = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return SPARK_CONF, opts
    jars = sorted(os.listdir(Path(pyspark.__file__).parent / "jars"))
    key = hashlib.sha256("\n".join([version, opts, CLASS_ARCHIVE_JOB, *jars]).encode()).hexdigest()[:16]
    home = Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "spark-dl-pipeline")) / "jvm"
    archive, empty = home / f"spark-{pyspark.__version__}-{key}.jsa", home / "empty-conf"
    empty.mkdir(parents=True, exist_ok=True)
    shared = f"{opts} -Dlog4j2.configurationFile=file:{SPARK_CONF / 'log4j2.properties'} -Xlog:cds=off"
    if not archive.exists() and "PYTEST_XDIST_WORKER" not in os.environ:
        with tempfile.TemporaryDirectory(dir=home) as tmp:
            (Path(tmp) / "job.py").write_text(CLASS_ARCHIVE_JOB)
            env = {**os.environ, "SPARK_CONF_DIR": str(empty), "PYSPARK_PYTHON": sys.executable,
                   "SPARK_SUBMIT_OPTS": f"{shared} -XX:ArchiveClassesAtExit={tmp}/spark.jsa"}
            p = subprocess.run(["spark-submit", "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                                f"{tmp}/job.py", tmp], env=env, capture_output=True, text=True, timeout=300)
            if p.returncode == 0 and (Path(tmp) / "spark.jsa").exists():
                os.replace(Path(tmp) / "spark.jsa", archive)
            else:
                print(f"conftest: no JVM class archive (spark-submit exited {p.returncode}); "
                      f"the tests run without it:\n{p.stderr[-2000:]}", file=sys.stderr)
        for stale in home.glob(f"spark-{pyspark.__version__}-*.jsa"):  # this Spark's older builds
            if stale != archive:
                stale.unlink(missing_ok=True)
    if not archive.exists():
        return SPARK_CONF, opts
    return empty, f"{shared} -XX:SharedArchiveFile={archive}"


SPARK_CONF_DIR, TEST_JVM_OPTS = _with_class_sharing(TEST_JVM_OPTS)
if os.environ.setdefault("SPARK_SUBMIT_OPTS", TEST_JVM_OPTS) != TEST_JVM_OPTS:
    SPARK_CONF_DIR = SPARK_CONF  # the caller's own JVM options, without the log4j setting
os.environ["SPARK_CONF_DIR"] = str(SPARK_CONF_DIR)


# With pytest-xdist (scripts/test.sh runs two workers, --dist loadgroup), the tests that share
# one of these expensive session fixtures run on the same worker, and so do the tests of one
# file (its module fixtures), so each is built once per session, not once per worker.
SHARED_RUNS = ("digits_pipeline", "wine_pipeline", "digits_curated", "cancer_curated", "co2_curated")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers under --dist loadgroup
        return
    from _pytest.nodeid import NodeId

    for item in items:
        group = next((f for f in SHARED_RUNS if f in getattr(item, "fixturenames", ())), None) or item.path.name
        # xdist 3.8 groups by an "@group" suffix of the node id, which it writes to Item._nodeid;
        # pytest 9.2 keeps the id in Item._id, so the suffix is written there.
        if isinstance(getattr(item, "_id", None), NodeId):
            item._id = NodeId.parse(f"{item.nodeid}@{group}")
        else:
            item.add_marker(pytest.mark.xdist_group(group))


# The CPU budget per test: with PIPELINE_TEST_CPU=<file>, each test appends its node id, wall
# seconds and the whole machine's busy CPU-seconds (/proc/stat) to <file>. The machine's, because
# a test's work runs in JVMs, ranks and executors it does not wait for; so it means something only
# for one pytest process (-n 0) on an otherwise idle machine. A session fixture's set-up counts
# against the first test that uses it.
def _busy_cpu_seconds() -> float:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    report = os.environ.get("PIPELINE_TEST_CPU")
    if not report:
        yield
        return
    cpu, wall = _busy_cpu_seconds(), time.perf_counter()
    yield
    with open(report, "a") as f:
        f.write(f"{item.nodeid}\t{time.perf_counter() - wall:.1f}\t{_busy_cpu_seconds() - cpu:.1f}\n")


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    tmp = tmp_path_factory.mktemp("spark")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    s = (SparkSession.builder.master("local[2]").appName("tests")
         .config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", "2")
         .config("spark.sql.warehouse.dir", str(tmp / "warehouse"))
         .config("spark.local.dir", str(tmp / "local"))
         .config("spark.driver.memory", "2g")
         .getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def job_env() -> dict[str, str]:
    """The environment scripts/env.sh gives the jobs."""
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(PATH=venv_bin + os.pathsep + env.get("PATH", ""), PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_CONF_DIR=str(SPARK_CONF_DIR))
    return env


# The two stack profiles' environments in this checkout (scripts/setup.sh), for the tests that run
# a command under a given profile's interpreter whichever profile runs pytest.
PROFILES = {"default": ROOT / ".venv", "modern": ROOT / ".venv-modern"}


def profile_python(profile: str) -> Path:
    """The profile's interpreter; the test skips where that profile is not set up."""
    py = PROFILES[profile] / "bin" / "python"
    if not py.exists():
        pytest.skip(f"the {profile} profile is not set up here ({py}): "
                    f"run {'PROFILE=modern ' if profile == 'modern' else ''}bash scripts/setup.sh")
    return py


def profile_env(profile: str) -> dict[str, str]:
    """The jobs' environment with the profile's venv first on PATH (horovodrun and torchrun start
    its python)."""
    bin_dir = str(PROFILES[profile] / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), PYSPARK_PYTHON=f"{bin_dir}/python",
               PYSPARK_DRIVER_PYTHON=f"{bin_dir}/python", SPARK_CONF_DIR=str(SPARK_CONF_DIR),
               PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning")
    return env


def hive_conf(directory) -> list[str]:
    """spark-submit flags for a persistent catalog: Spark's Hive support with a local Derby
    metastore and warehouse under ``directory``, shared by every application given them."""
    return ["--conf", "spark.sql.catalogImplementation=hive",
            "--conf", f"spark.sql.warehouse.dir={directory}/warehouse",
            "--conf", "spark.hadoop.javax.jdo.option.ConnectionURL="
                      f"jdbc:derby:;databaseName={directory}/metastore_db;create=true",
            "--driver-java-options", f"-Dderby.system.home={directory}"]


# --- sample data preprocessed in-process, once per session ----------------------------------

# Held-out dates of the in-process lakes: the first with one bad record of each kind (in the
# labelled set too, where preprocess quarantines them), the second clean.
BAD_DATE, CLEAN_DATE = "2026-04-01", "2026-04-02"


@pytest.fixture(scope="session")
def digits_curated(spark, tmp_path_factory):
    """The digits preprocessed in-process on the session's Spark: (config, manifest). Tests
    train models under names of their own in this lake and score its dates; none preprocesses
    it again (its curated _latest never moves)."""
    from pipeline import preprocess
    from pipeline.core.config import load_config
    from pipeline.samples import sample_data

    cfg = load_config("conf/digits.yaml", [f"lake.root={tmp_path_factory.mktemp('digits-curated')}"])
    sample_data.write_digits(cfg, BAD_DATE, bad_records=True)
    sample_data.write_digits(cfg, CLEAN_DATE)
    return cfg, preprocess.run(spark, cfg).manifest


@pytest.fixture(scope="session")
def cancer_curated(spark, tmp_path_factory):
    """The breast-cancer table preprocessed in-process, with one bad row of each kind in the
    labelled set and in the held-out rows for BAD_DATE: (config, manifest), shared as
    digits_curated is."""
    from pipeline import preprocess
    from pipeline.core.config import load_config
    from pipeline.samples import sample_data

    cfg = load_config("conf/breast_cancer.yaml", [f"lake.root={tmp_path_factory.mktemp('cancer-curated')}"])
    sample_data.write_breast_cancer(cfg, BAD_DATE, bad_records=True)
    return cfg, preprocess.run(spark, cfg).manifest


@pytest.fixture(scope="session")
def co2_curated(spark, tmp_path_factory):
    """statsmodels' weekly CO2 (with its missing weeks) preprocessed in-process with
    conf/co2.yaml: (config, manifest), shared as digits_curated is."""
    from pipeline import preprocess
    from pipeline.core.config import load_config
    from pipeline.samples import sample_data

    cfg = load_config("conf/co2.yaml", [f"lake.root={tmp_path_factory.mktemp('co2-curated')}"])
    sample_data.write_series(cfg, CLEAN_DATE)
    return cfg, preprocess.run(spark, cfg).manifest


# --- running the jobs the way a user does ---------------------------------------------------

def sets(*overrides: str) -> list[str]:
    """``--set KEY=VALUE`` for each override."""
    return [x for o in overrides for x in ("--set", o)]


def run(args, *, env=None, check=True, timeout=900) -> subprocess.CompletedProcess:
    """Run a command from the repository root in the jobs' environment; output captured, the
    wall time in ``.wall_s``. With ``check``, a non-zero exit fails with both output tails."""
    t0 = time.perf_counter()
    p = subprocess.run([str(a) for a in args], cwd=ROOT, env=job_env() if env is None else env,
                       capture_output=True, text=True, timeout=timeout)
    p.wall_s = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode} after {p.wall_s:.0f} s\n"
                             f"stdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


def submit_command(script, *args, master="local[2]", spark_args=()) -> list[str]:
    """The spark-submit command line for ``script`` (a job such as ``jobs/train.py``)."""
    return ["spark-submit", "--master", master, *map(str, spark_args), str(script), *map(str, args)]


def spark_submit(script, *args, master="local[2]", spark_args=(), env=None, check=True,
                 timeout=900) -> subprocess.CompletedProcess:
    """``script`` through spark-submit, as a user runs it. spark-submit forwards the Python
    driver's stderr on its stdout: read both."""
    return run(submit_command(script, *args, master=master, spark_args=spark_args), env=env, check=check,
               timeout=timeout)


def write_sample(config: str, root, date: str, *overrides: str, env=None) -> subprocess.CompletedProcess:
    """The bundled sample data for ``config`` under the lake ``root``, as the README writes it."""
    return run([sys.executable, "-m", "pipeline.samples.sample_data", "--config", config,
                *sets(f"lake.root={root}", *overrides), "--date", date], env=env)


def _has_mlflow_server() -> bool:
    return (Path(sys.executable).parent / "mlflow").exists()


# --- each sample pipeline through spark-submit, once per session ----------------------------

DIGITS_DATE = "2026-01-15"
# The digits pass 0.95 in 8 of conf/digits.yaml's 15 epochs (the quickstart's 0.97 needs all 15).
DIGITS_EPOCHS = "train.epochs=8"


def _on_a_cluster() -> bool:
    """Where the default profile runs (Horovod installed, Linux's /proc for the executor watch),
    the digits pipeline runs on a standalone cluster; elsewhere on local[2]."""
    from pipeline.training import distributed

    return distributed.installed("horovod") and Path("/proc/self/maps").exists()


@pytest.fixture(scope="session")
def digits_pipeline(request, tmp_path_factory):
    """The digits through the jobs, as the README runs them: sample data, preprocess, train
    (2 ranks), and where the full MLflow is installed tracked on the session's MLflow server
    with the promotion gates run; then score, against ``models:/digits-cnn@champion`` where
    promoted. test_e2e, test_tracking and test_cluster read its outputs; nothing may move its
    ``_latest`` pointers.

    On the default profile the jobs run on a standalone master and two workers on 127.0.0.1
    (tests/standalone.py), shipped with scripts/package.sh, while a watch records the executors'
    Python processes; training loses an executor after its first checkpoint and restarts its
    ranks (train.max_restarts=1). On the modern profile they run on local[2]."""
    from pipeline.core.config import load_config

    root = tmp_path_factory.mktemp("digits-lake")
    tracked = _has_mlflow_server()
    uri = request.getfixturevalue("mlflow_server") if tracked else None
    tracking = [f"tracking.uri={uri}"] if tracked else []
    overrides = [f"lake.root={root}", DIGITS_EPOCHS, *tracking]
    s = ["--config", "conf/digits.yaml", *sets(*overrides)]
    write_sample("conf/digits.yaml", root, DIGITS_DATE, *tracking)
    out = {"root": root, "s": s, "uri": uri, "tracked": tracked, "date": DIGITS_DATE, "on_cluster": _on_a_cluster()}
    with ExitStack() as stack:
        if out["on_cluster"]:
            import standalone

            cluster = stack.enter_context(standalone.standalone(tmp_path_factory.mktemp("standalone")))
            packaged = standalone.package()
            submit = partial(spark_submit, master=cluster.master_url, spark_args=standalone.spark_args(packaged),
                             env=standalone.submit_env(), timeout=standalone.JOB_TIMEOUT_S)
            watch = out["watch"] = standalone.ExecutorWatch(cluster.work_dirs)
            kill = standalone.ExecutorKill(root / "models" / "digits-cnn", cluster.work_dirs)
            watch.start()
            stack.callback(watch.stop)
            stack.callback(kill.stop)
            heal = ["--set", "train.max_restarts=1"]
        else:
            submit, watch, kill, heal = spark_submit, None, None, []
        for job, args in (("preprocess", []), ("train", heal)):
            if watch:
                watch.job = job
            if kill and job == "train":
                kill.start()
            out[job] = submit(f"jobs/{job}.py", *s, *args)
        model = []
        if tracked:
            promote = [sys.executable, "jobs/promote.py", *s, "--model", "digits-cnn", "--from", "candidate",
                       "--to", "champion"]
            out["gate_fails"] = run([*promote, "--require", "test_accuracy>=1.01"], check=False)
            out["gate_unknown"] = run([sys.executable, "jobs/promote.py", *s, "--require", "test_f1>=0.5"],
                                      check=False)
            out["promote"] = run([*promote, "--require", "test_accuracy>=0.5", "--require", "best_val_accuracy>0.5"])
            model = ["--model", "models:/digits-cnn@champion"]
        if watch:
            watch.job = "score"
        out["score"] = submit("jobs/score.py", *s, "--date", DIGITS_DATE, *model)
    out["executor_killed"] = kill.killed if kill else []
    out["cfg"] = load_config("conf/digits.yaml", overrides)
    print(f"\ndigits pipeline ({'standalone cluster' if out['on_cluster'] else 'local[2]'}): "
          + ", ".join(f"{k} {out[k].wall_s:.0f} s" for k in ("preprocess", "train", "score")))
    return out


WINE_DATE = "2026-03-01"
WINE_QUERY = "query:SELECT * FROM cellar.incoming WHERE dt = '{date}'"


@pytest.fixture(scope="session")
def wine_pipeline(tmp_path_factory):
    """The wine table (no id column) through the jobs with a persistent catalog (Spark's Hive
    support, a Derby metastore and warehouse in a temporary directory): spark-sql writes the raw
    CSVs as catalog tables; preprocess reads one, train fits the MLP (the only wine model of the
    session: test_formats scores with it too), score reads a query for the date, copies
    business keys into the predictions and writes a catalog table. The prediction partition is
    read here, since other scoring runs for the date replace it."""
    import pyarrow.parquet as pq

    from pipeline.core import lake, manifest
    from pipeline.core.config import load_config

    root, catalog = tmp_path_factory.mktemp("wine-lake"), tmp_path_factory.mktemp("catalog")
    write_sample("conf/wine.yaml", root, WINE_DATE)
    cfg = load_config("conf/wine.yaml", [f"lake.root={root}"])
    raw, new = (lake.local_path(cfg.resolve(u)) for u in (cfg.dataset.source, cfg.dataset.score_source))
    # The raw CSVs become typed Parquet tables in the catalog, written by one application...
    run(["spark-sql", "--master", "local[1]", *hive_conf(catalog), "-e",
         f"CREATE DATABASE cellar;"
         f"CREATE TEMPORARY VIEW raw USING csv OPTIONS (path '{raw}', header 'true', inferSchema 'true');"
         f"CREATE TABLE cellar.labelled USING parquet AS SELECT * FROM raw;"
         f"CREATE TEMPORARY VIEW new USING csv OPTIONS (path '{new}/dt={WINE_DATE}', header 'true', inferSchema 'true');"
         f"CREATE TABLE cellar.incoming USING parquet PARTITIONED BY (dt) AS SELECT *, '{WINE_DATE}' AS dt FROM new;"])

    # ...and read by the next ones.
    s = ["--config", "conf/wine.yaml", *sets(f"lake.root={root}", "dataset.tabular.ignore=[lot, dt]")]

    def submit(job, *args, check=True):
        return spark_submit(f"jobs/{job}.py", *s, *args, spark_args=hive_conf(catalog), check=check)
    out = {"root": root, "cfg": cfg, "catalog": catalog, "date": WINE_DATE}
    out["preprocess"] = submit("preprocess", "--set", "dataset.source=table:cellar.labelled")
    out["train"] = submit("train")
    out["score"] = submit("score", "--date", WINE_DATE, *sets(f"dataset.score_source={WINE_QUERY}",
                                                              "score.passthrough=[lot, dt]",
                                                              "score.output_table=cellar.predictions"))
    part = cfg.uri("predictions", "wine-mlp", f"dt={WINE_DATE}")
    out["predictions"] = (manifest.read(part), pq.read_table(lake.local_path(part)).to_pandas())
    out["unknown_table"] = submit("score", "--date", WINE_DATE, "--set", "dataset.score_source=table:cellar.nope",
                                  check=False)
    out["missing_path"] = submit("preprocess", "--set", f"dataset.source={root}/nowhere", check=False)
    print("\nwine pipeline: " + ", ".join(f"{k} {out[k].wall_s:.0f} s" for k in ("preprocess", "train", "score")))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend, local artifact root), started
    once per session and stopped by its process id. Yields its URI."""
    import signal
    import subprocess
    import time
    import urllib.request

    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", f"file://{tmp}/artifacts",
             "--workers", "1"],
            # no job runner: its eight consumer processes cost CPU that the tests, which run no
            # server-side jobs, need
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server not up in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # start_new_session: the group of its workers is its pid
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
