"""Training through each launcher, on real curated data, with real Horovod or torch.distributed
processes: on the default stack the ranks started outside Spark come from horovodrun, on the
modern one (no Horovod) from torchrun."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from conftest import CLEAN_DATE, ROOT, job_env
from pipeline.model import artifact
from pipeline.ops import tracking
from pipeline.training import distributed
from pipeline.core import lake, manifest
from pipeline import preprocess, train
from pipeline.samples import sample_data
from pipeline.core.config import load_config

DATE = "2026-03-01"


@pytest.fixture(scope="module")
def digits(digits_curated):
    cfg, m = digits_curated  # conftest: the session's preprocessed digits; models here have names of their own
    return lake.local_path(cfg.lake.root), m


def _cfg(root, *overrides):
    return load_config("conf/digits.yaml", [f"lake.root={root}", *overrides])


HOROVOD = distributed.installed("horovod")


def _two_ranks(root, *args, overrides=(), probe=None, max_restarts=0, **popen):
    """jobs/train.py on 2 ranks started by horovodrun where Horovod is installed, else by torchrun
    (restarting its ranks up to ``max_restarts`` times). With ``probe`` (a directory), each rank
    records the modules it imported there (tests/rank_probe.py)."""
    launch = (["horovodrun", "-np", "2", "-H", "localhost:2", "python"] if HOROVOD
              else ["torchrun", "--nproc_per_node=2", "--standalone", f"--max-restarts={max_restarts}"])
    if probe is not None:
        launch = [*launch, "tests/rank_probe.py", str(probe)]
    cmd = [*launch, "jobs/train.py", "--config", "conf/digits.yaml",
           "--set", f"lake.root={root}", *[x for o in overrides for x in ("--set", o)], *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **popen)


def _probed(directory) -> dict[str, list[str]]:
    """rank -> the top-level modules its process imported (tests/rank_probe.py)."""
    return {r["rank"]: r["modules"] for r in (json.loads(f.read_text()) for f in sorted(directory.glob("*.json")))}


def test_the_rank_probe_sees_an_import_of_pyspark(tmp_path):
    """Negative control for the rank checks below: a script that imports pyspark is seen doing so."""
    (tmp_path / "uses_spark.py").write_text("import pyspark.sql\n")
    out = tmp_path / "probe"
    out.mkdir()
    p = subprocess.run([sys.executable, "tests/rank_probe.py", str(out), str(tmp_path / "uses_spark.py")],
                       cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    (modules,) = _probed(out).values()
    assert "pyspark" in modules and "json" in modules


@contextmanager
def _kill_a_rank(models, checkpoint, ranks, timeout=300):
    """While the block runs: once a run of the model (``models``: its directory) has written
    ``checkpoint``, SIGKILL the last of ``ranks()`` (psutil processes); the list it yields holds
    the killed process."""
    killed, done = [], threading.Event()

    def watch():
        deadline = time.time() + timeout
        while not done.is_set() and time.time() < deadline:
            runs = [f"{models}/{d}/checkpoints" for d in (os.listdir(models) if os.path.isdir(models) else [])]
            if any(os.path.exists(f"{r}/{checkpoint}") for r in runs) and (found := ranks()):
                found[-1].send_signal(signal.SIGKILL)
                killed.append(found[-1])
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield killed
    finally:
        done.set()
        watcher.join()


def _descendants(marker, of=None):
    """The live Python processes below ``of`` (default: this one) whose command line holds ``marker``."""
    def running(c):
        try:
            return (c.name().startswith("python") and marker in " ".join(c.cmdline())
                    and c.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False
    return [c for c in psutil.Process(of).children(recursive=True) if running(c)]


@pytest.fixture(scope="module")
def local_cnn(digits):
    """One 4-epoch training on the local launcher: (config, result)."""
    root, _ = digits
    cfg = _cfg(root, "train.epochs=4", "train.model_name=local-cnn")
    return cfg, train.run_local(cfg)


def test_local_launcher_trains_and_is_reproducible(digits, local_cnn):
    """Twice the same training; the second in a child process that is SIGKILLed in epoch 2 and
    restarted by the launcher (train.max_restarts), from its last checkpoint: the same result."""
    root, _ = digits
    _, a = local_cnn
    healing = _cfg(root, "train.epochs=4", "train.model_name=local-heal", "train.max_restarts=1")
    with _kill_a_rank(f"{root}/models/local-heal", "epoch=0000.pt", lambda: _descendants("--multiprocessing-fork")) \
            as killed:
        b = train.run_local(healing)
    assert killed, "training finished before its rank could be killed"
    assert b.restarts == 1 and manifest.read(b.model_uri)["restarts"] == 1
    if b.mlflow_run_id:  # where MLflow's store is installed
        import mlflow

        # One MLflow run holds the whole history: each epoch once, before and after the restart.
        client = mlflow.MlflowClient(tracking.settings(healing)["uri"])
        (run,) = tracking._runs(tracking.settings(healing), {"stage": "train", "model_name": "local-heal"})
        assert run.info.run_id == b.mlflow_run_id and run.info.status == "FINISHED"
        assert sorted(h.step for h in client.get_metric_history(run.info.run_id, "val_loss")) == [0, 1, 2, 3]
        assert client.get_run(run.info.run_id).data.metrics["restarts"] == 1
    assert a.metrics["world_size"] == 1 and a.metrics["test_accuracy"] > 0.85
    assert a.run_id != b.run_id
    hist_a = lake.read_json(f"{a.model_uri}/history.json")
    hist_b = lake.read_json(f"{b.model_uri}/history.json")
    for x, y in zip(hist_a, hist_b):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-6)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-6)
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]


def test_horovodrun_launcher(digits):
    if not HOROVOD:
        pytest.skip("horovod is not installed (the modern profile): the torchrun ranks are tested below")
    root, _ = digits
    # fp16 gradient compression on the wire, resnet architecture: both exercised for real here.
    p = _two_ranks(root, overrides=["train.epochs=3", "train.model_name=hvdrun-cnn", "train.fp16_allreduce=true",
                                     "train.arch=resnet", "train.optimizer=adamw", "train.lr=0.003"])
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    run_id = lake.get_latest(f"file://{root}/models/hvdrun-cnn")
    metrics = lake.read_json(f"file://{root}/models/hvdrun-cnn/{run_id}/metrics.json")
    assert metrics["world_size"] == 2 and metrics["test_accuracy"] > 0.8
    # rank 0 alone writes the artifact: one run, one history line per epoch
    assert [d for d in os.listdir(f"{root}/models/hvdrun-cnn") if not d.startswith("_")] == [run_id]
    assert len(lake.read_json(f"file://{root}/models/hvdrun-cnn/{run_id}/history.json")) == 3


def test_bf16_mixed_precision_on_cpu(digits):
    root, _ = digits
    m = train.run_local(_cfg(root, "train.epochs=2", "train.mixed_precision=bf16", "train.model_name=bf16-cnn"))
    assert m.metrics["device"] == "cpu" and m.metrics["test_accuracy"] > 0.7


def _make_uneven(root, m, sizes):
    """Rewrite the train split as files of the given row counts (one row group each)."""
    uri = m["splits"]["train"]["uri"]
    path = lake.local_path(uri)
    t = pq.read_table(path)
    assert sum(sizes) == t.num_rows
    lake.remove(uri)
    os.makedirs(path)
    start = 0
    for i, n in enumerate(sizes):
        pq.write_table(t.slice(start, n), f"{path}/part-{i:05d}.parquet", row_group_size=n)
        start += n


UNEVEN = ("train.epochs=3", "preprocess.files_per_split=3")


@pytest.fixture(scope="module")
def uneven(spark, tmp_path_factory):
    """The digits preprocessed into 3 train files, rewritten so that rank 0 gets row groups 0 and
    2 and rank 1 only row group 1 (a 10x imbalance), and one uninterrupted 3-epoch training of
    them on the Spark launcher: (config, preprocess manifest, training result)."""
    root = tmp_path_factory.mktemp("uneven")
    cfg = _cfg(root, *UNEVEN, "train.model_name=uneven-cnn")
    sample_data.write_digits(cfg, DATE)
    m = preprocess.run(spark, cfg).manifest
    _make_uneven(root, m, [m["splits"]["train"]["count"] - 120, 60, 60])
    return cfg, m, train.run(spark, cfg)  # real horovod.spark.run or TorchDistributor, 2 ranks on local[2]


def test_uneven_shards_run_equal_steps_and_account_for_every_sample(uneven):
    _, m, result = uneven
    n = m["splits"]["train"]["count"]
    ranks = sorted(result.metrics["ranks"], key=lambda r: r["rank"])
    steps = result.metrics["steps_per_epoch"]
    assert steps == n // (32 * 2)
    assert [r["steps_run"] for r in ranks] == [steps * 3, steps * 3]
    assert [r["rows_read"] for r in ranks] == [steps * 3 * 32] * 2
    # Evaluation covers every row exactly once across the uneven shards.
    assert result.metrics["test_count"] == m["splits"]["test"]["count"]
    hist = lake.read_json(f"{result.model_uri}/history.json")
    assert [h["samples"] for h in hist] == [steps * 32 * 2] * 3


def test_spark_launcher_relaunches_after_a_rank_is_killed(spark, uneven):
    """horovod.spark.run (or TorchDistributor on the modern profile) on local[2], where the executor
    is the driver: a rank SIGKILLed early in epoch 2 fails the launch, which train.max_restarts
    retries from the last checkpoint; the per-epoch losses are those of the uninterrupted run of
    the same data and settings (the fixture's, on uneven shards)."""
    cfg, _, ref = uneven
    root = lake.local_path(cfg.lake.root)
    def ranks():  # below the Spark tasks: horovod.spark.run's ranks, or the workers of TorchDistributor's torchrun
        def rank(c):
            try:
                return c.name().startswith("python") and bool({"HOROVOD_RANK", "LOCAL_RANK"} & c.environ().keys())
            except psutil.Error:
                return False
        return [c for c in psutil.Process().children(recursive=True) if rank(c)]

    # Tracking off: the one MLflow run of a restarted training is checked with the local launcher.
    healing = _cfg(root, *UNEVEN, "train.model_name=spark-heal", "train.max_restarts=1", "tracking.enabled=false")
    with _kill_a_rank(f"{root}/models/spark-heal", "epoch=0000.pt", ranks) as killed:
        healed = train.run(spark, healing)
    assert killed, "training finished before a rank could be killed"
    assert healed.restarts == 1 and manifest.read(healed.model_uri)["restarts"] == 1
    resumed, reference = (lake.read_json(f"{m.model_uri}/history.json") for m in (healed, ref))
    assert len(resumed) == len(reference) == 3
    for a, b in zip(resumed, reference):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5), (a, b)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
    assert healed.metrics["test_accuracy"] == ref.metrics["test_accuracy"]


def test_killed_worker_then_resume_matches_an_uninterrupted_run(digits, tmp_path):
    """With image augmentation on: its random draws must replay exactly after the resume. Under
    horovodrun the killed job fails and --resume continues it; torchrun (the modern profile)
    restarts the ranks itself (--max-restarts, train.max_restarts) and they resume the same run."""
    root, _ = digits
    heals = not HOROVOD
    over = ["train.epochs=4", "train.batch_size=8", "train.model_name=resume-cnn",
            "train.augment.crop_padding=1", "train.augment.hflip=true", "train.augment.rotate_degrees=8",
            "train.augment.brightness=0.2", "train.augment.contrast=0.2"]
    ck_dir = f"{root}/models/resume-cnn"
    p = _two_ranks(root, overrides=over + ["train.max_restarts=1"] * heals, max_restarts=int(heals))
    try:
        with _kill_a_rank(ck_dir, "epoch=0001.pt", lambda: _descendants("jobs/train.py", of=p.pid)) as killed:
            out, _ = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert killed, "training finished before a worker could be killed"
    (run_id,) = [d for d in os.listdir(ck_dir) if not d.startswith("_")]
    if heals:
        assert p.returncode == 0, out[-3000:]
        assert manifest.read(f"file://{ck_dir}/{run_id}")["restarts"] == 1  # one run, restarted once
    else:
        assert p.returncode != 0
        assert not os.path.exists(f"{ck_dir}/{run_id}/model.pt")  # it never finished
        assert not os.path.exists(f"{ck_dir}/_latest")
        r = _two_ranks(root, "--resume", run_id, overrides=over)
        out, _ = r.communicate(timeout=600)
        assert r.returncode == 0, out[-3000:]
    assert "resuming from" in out

    probe = tmp_path / "probe"
    probe.mkdir()
    # Tracking off for this run: MLflow's own import probes for pyspark where it is installed
    # (mlflow.types.schema), which says nothing about the pipeline's rank code.
    ref = _two_ranks(root, overrides=[o for o in over if "model_name" not in o] +
                     ["train.model_name=reference-cnn", "tracking.enabled=false"], probe=probe)
    ref_out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_out[-3000:]
    # Ranks started outside Spark never import it (the probe sees one that does: see above).
    ranks = _probed(probe)
    assert sorted(ranks) == ["0", "1"], ranks
    for rank, modules in ranks.items():
        assert "pyspark" not in modules and "py4j" not in modules, (rank, [m for m in modules if "spark" in m])
    resumed = lake.read_json(f"file://{ck_dir}/{run_id}/history.json")
    ref_id = lake.get_latest(f"file://{root}/models/reference-cnn")
    reference = lake.read_json(f"file://{root}/models/reference-cnn/{ref_id}/history.json")
    assert len(resumed) == len(reference) == 4
    for a, b in zip(resumed, reference):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5), (a, b)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
    m_res = lake.read_json(f"file://{ck_dir}/{run_id}/metrics.json")
    m_ref = lake.read_json(f"file://{root}/models/reference-cnn/{ref_id}/metrics.json")
    assert m_res["test_accuracy"] == m_ref["test_accuracy"]


def test_load_model_returns_everything_scoring_needs(digits, local_cnn):
    _, m = digits
    cfg, _ = local_cnn
    loaded = artifact.load_model(cfg.lake.root, "local-cnn@latest")
    assert loaded.label_names == [str(i) for i in range(10)]
    assert loaded.spec["dataset"]["version"] == m["version"]
    t = pq.read_table(lake.local_path(m["splits"]["test"]["uri"])).to_pandas()
    from pipeline.ingest.images import ImageLayout, images_to_tensor_layout

    x = images_to_tensor_layout(t["image"], ImageLayout(8, 8, 1))
    probs = loaded.predict_proba(x)
    assert probs.shape == (len(t), 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    with pytest.raises(artifact.ModelNotFound, match="runs available"):
        artifact.load_model(cfg.lake.root, "local-cnn@nope")
    with pytest.raises(artifact.ModelNotFound, match="no trained model named 'ghost'"):
        artifact.load_model(cfg.lake.root, "ghost@latest")


def test_tabular_mlp_is_at_least_as_accurate_as_logistic_regression(spark, cancer_curated):
    from sklearn.linear_model import LogisticRegression

    cfg, m = cancer_curated  # conftest: the session's preprocessed table
    cfg = load_config("conf/breast_cancer.yaml", [f"lake.root={cfg.lake.root}", "train.model_name=cancer-spark"])
    result = train.run(spark, cfg)  # 2 ranks on Spark, the bundled config

    def split(name):
        t = pq.read_table(lake.local_path(m["splits"][name]["uri"])).to_pandas()
        return np.stack(t["features"].values), t["label"].values

    from sklearn import metrics as skm

    (x_train, y_train), (x_test, y_test) = split("train"), split("test")
    lr = LogisticRegression(max_iter=5000).fit(x_train, y_train)
    baseline = lr.score(x_test, y_test)
    lr_auc = skm.roc_auc_score(y_test, lr.predict_proba(x_test)[:, 1])
    lr_f1 = skm.f1_score(y_test, lr.predict(x_test), average="macro")
    assert result.metrics["test_count"] == len(y_test)
    assert result.metrics["test_accuracy"] >= baseline, (result.metrics["test_accuracy"], baseline)
    mlp = result.metrics
    print(f"\nbreast cancer on the same {len(y_test)} test rows: MLP accuracy {mlp['test_accuracy']:.4f}, "
          f"ROC AUC {mlp['test_roc_auc']:.4f}, PR AUC {mlp['test_pr_auc']:.4f}, macro-F1 {mlp['test_macro_f1']:.4f}; "
          f"LogisticRegression accuracy {baseline:.4f}, ROC AUC {lr_auc:.4f}, macro-F1 {lr_f1:.4f}")
    assert result.metrics["test_roc_auc"] >= lr_auc - 0.02 and result.metrics["test_macro_f1"] >= lr_f1 - 0.02
    # The reported metrics are scikit-learn's on the saved model's predictions for the test rows.
    probs = artifact.load_model(cfg.lake.root, "cancer-spark@latest").predict_proba(x_test.astype(np.float32))
    assert result.metrics["test_roc_auc"] == pytest.approx(skm.roc_auc_score(y_test, probs[:, 1]), abs=1e-6)
    assert result.metrics["test_pr_auc"] == pytest.approx(skm.average_precision_score(y_test, probs[:, 1]), abs=1e-6)
    assert mlp["test_macro_f1"] == pytest.approx(skm.f1_score(y_test, probs.argmax(1), average="macro"), abs=1e-9)
    cm = lake.read_json(f"{result.model_uri}/confusion_matrix.json")
    assert cm["confusion_matrix"] == skm.confusion_matrix(y_test, probs.argmax(1)).tolist()
    assert lake.exists(f"{result.model_uri}/confusion_matrix.png")


FACTORY = """import torch
__version__ = "0.3"

def build(spec):
    c, h, w = spec["input_shape"]
    return torch.nn.Sequential(torch.nn.Conv2d(c, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(16 * h * w, spec["num_classes"]))
"""


def test_model_from_a_module_path_is_trained_and_scored(spark, digits, tmp_path, monkeypatch):
    from pipeline import score

    root, m = digits
    (tmp_path / "team_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))  # the driver and the in-process rank
    spark.sparkContext.addPyFile(str(tmp_path / "team_models.py"))  # what --py-files does for the executors
    cfg = _cfg(root, "train.epochs=3", "train.arch=team_models:build", "train.model_name=team-model",
               "train.optimizer=adam", "train.lr=0.003")
    result = train.run_local(cfg)
    assert result.metrics["test_accuracy"] > 0.85
    spec = lake.read_json(f"{result.model_uri}/model.json")
    assert spec["model"]["factory"]["path"] == "team_models:build" and spec["model"]["factory"]["version"] == "0.3"
    out = score.run(spark, cfg, CLEAN_DATE, "team-model@latest").manifest
    assert out["output_count"] == 179 and out["quarantined_count"] == 0
