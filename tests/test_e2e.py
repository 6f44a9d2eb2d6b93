"""The three jobs through spark-submit, the way a user runs them, on the bundled digits."""
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, job_env
from pipeline import lake, manifest
from pipeline.config import load_config

pytestmark = pytest.mark.e2e
DATE = "2026-01-15"


def _run(args, check=True):
    p = subprocess.run(args, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


def _submit(job, *args, check=True):
    return _run(["spark-submit", "--master", "local[2]", f"jobs/{job}.py", "--config", "conf/digits.yaml", *args],
                check=check)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    s = ["--set", f"lake.root={root}"]
    _run([sys.executable, "-m", "pipeline.sample_data", "--config", "conf/digits.yaml", *s, "--date", DATE])
    out = {"root": root}
    out["preprocess"] = _submit("preprocess", *s)
    out["train"] = _submit("train", *s, "--set", "train.epochs=15")
    out["score"] = _submit("score", *s, "--date", DATE)
    out["cfg"] = load_config("conf/digits.yaml", [f"lake.root={root}"])
    return out


def test_preprocess_manifest_reconciles(pipeline_run):
    cfg = pipeline_run["cfg"]
    uri = cfg.uri("curated", "digits", lake.get_latest(cfg.uri("curated", "digits")))
    m = manifest.read(uri)
    assert m["input_count"] == 1618 == m["output_count"] + m["quarantined_count"]
    assert sum(s["count"] for s in m["splits"].values()) == m["output_count"]
    assert m["label_names"] == [str(i) for i in range(10)]
    assert m["config"]["lake"]["root"] == cfg.lake.root
    for split in ("train", "val", "test"):
        t = pq.read_table(lake.local_path(f"{uri}/{split}"))
        assert t.num_rows == m["splits"][split]["count"]
        assert set(t.column_names) == {"id", "path", "image", "label"}


def test_training_reaches_accuracy_and_writes_the_artifact(pipeline_run):
    out = pipeline_run["train"].stdout
    line = [ln for ln in out.splitlines() if ln.startswith("test accuracy:")][-1]
    assert float(line.split()[2]) >= 0.97, out[-3000:]
    epoch_lines = [ln for ln in out.splitlines() if " train: epoch " in ln]
    assert len(epoch_lines) == 15  # one line per epoch of 2 ranks: only rank 0 logs
    cfg = pipeline_run["cfg"]
    run_id = lake.get_latest(cfg.uri("models", "digits-cnn"))
    d = cfg.uri("models", "digits-cnn", run_id)
    metrics = lake.read_json(f"{d}/metrics.json")
    assert metrics["test_accuracy"] >= 0.97 and metrics["world_size"] == 2
    if metrics["backend"] == "horovod":  # horovod.spark.run prefixes each line with its rank
        assert all(ln.startswith("[0]") for ln in epoch_lines)
    spec = lake.read_json(f"{d}/model.json")
    assert spec["label_names"] == [str(i) for i in range(10)]
    assert spec["dataset"]["version"] in lake.get_latest(cfg.uri("curated", "digits"))
    for f in ("model.pt", "history.json", "config.json", "training_curve.png", "checkpoints/_latest"):
        assert lake.exists(f"{d}/{f}"), f


def test_one_prediction_per_held_out_file(pipeline_run):
    cfg = pipeline_run["cfg"]
    part = cfg.uri("predictions", "digits-cnn", f"dt={DATE}")
    t = pq.read_table(lake.local_path(part)).to_pandas()
    incoming = lake.listdir(cfg.resolve(cfg.dataset.score_source) + f"/dt={DATE}")
    assert len(incoming) == 179
    assert len(t) == 179 and t["path"].is_unique
    assert sorted(p.rsplit("/", 1)[1] for p in t["path"]) == sorted(incoming)
    m = manifest.read(part)
    assert m["input_count"] == 179 == m["output_count"] + m["quarantined_count"]
    # The held-out truth was never seen by training: predictions must agree with it.
    truth = dict(line.split(",") for line in lake.read_bytes(
        cfg.uri("raw", "digits", "holdout_labels", f"dt={DATE}.csv")).decode().splitlines()[1:])
    hits = sum(truth[p.rsplit("/", 1)[1]] == pred for p, pred in zip(t["path"], t["prediction"]))
    assert hits / len(t) >= 0.93
    assert set(t["run_id"]) == {lake.get_latest(cfg.uri("models", "digits-cnn"))}
