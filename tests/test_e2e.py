"""The three jobs through spark-submit, the way a user runs them, on the bundled digits."""
import pyarrow.parquet as pq
import pytest

from pipeline.core import lake, manifest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline_run(digits_pipeline):
    return digits_pipeline  # conftest.digits_pipeline: the session's one run of the digits jobs


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
    cfg = pipeline_run["cfg"]
    run_id = lake.get_latest(cfg.uri("models", "digits-cnn"))
    d = cfg.uri("models", "digits-cnn", run_id)
    metrics = lake.read_json(f"{d}/metrics.json")
    assert metrics["test_accuracy"] >= 0.95 and metrics["world_size"] == 2, pipeline_run["train"].stdout[-3000:]
    history = lake.read_json(f"{d}/history.json")
    assert [h["epoch"] for h in history] == list(range(cfg.train.epochs))
    # Only rank 0 logs: one line per epoch from 2 ranks (horovod.spark.run prefixes each with its rank).
    epoch_lines = [ln for ln in pipeline_run["train"].stdout.splitlines() if " train: epoch " in ln]
    assert len(epoch_lines) == cfg.train.epochs
    if metrics["backend"] == "horovod":
        assert all(ln.startswith("[0]") for ln in epoch_lines)
    spec = lake.read_json(f"{d}/model.json")
    assert spec["label_names"] == [str(i) for i in range(10)]
    assert spec["dataset"]["version"] in lake.get_latest(cfg.uri("curated", "digits"))
    for f in ("model.pt", "history.json", "config.json", "training_curve.png", "checkpoints/_latest"):
        assert lake.exists(f"{d}/{f}"), f


def test_one_prediction_per_held_out_file(pipeline_run):
    cfg = pipeline_run["cfg"]
    part = cfg.uri("predictions", "digits-cnn", f"dt={pipeline_run['date']}")
    t = pq.read_table(lake.local_path(part)).to_pandas()
    incoming = lake.listdir(cfg.resolve(cfg.dataset.score_source) + f"/dt={pipeline_run['date']}")
    assert len(incoming) == 179
    assert len(t) == 179 and t["path"].is_unique
    assert sorted(p.rsplit("/", 1)[1] for p in t["path"]) == sorted(incoming)
    m = manifest.read(part)
    assert m["input_count"] == 179 == m["output_count"] + m["quarantined_count"]
    # The held-out truth was never seen by training: predictions must agree with it.
    truth = dict(line.split(",") for line in lake.read_bytes(
        cfg.uri("raw", "digits", "holdout_labels", f"dt={pipeline_run['date']}.csv")).decode().splitlines()[1:])
    hits = sum(truth[p.rsplit("/", 1)[1]] == pred for p, pred in zip(t["path"], t["prediction"]))
    assert hits / len(t) >= 0.93
    assert set(t["run_id"]) == {lake.get_latest(cfg.uri("models", "digits-cnn"))}
    assert m["run_id"] and m["model"]["run_id"] == lake.get_latest(cfg.uri("models", "digits-cnn"))
