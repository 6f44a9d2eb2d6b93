"""MLflow tracking, the registry, promotion, lineage and cost, against a real MLflow server on
127.0.0.1 (conftest.mlflow_server) and the embedded SQLite default, through the real jobs."""
import glob
import json
import os
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import free_port, run
from pipeline.model import artifact
from pipeline.ops import registry
from pipeline.core import lake, manifest
from pipeline.ops import tracking
from pipeline.core.config import load_config

pytestmark = pytest.mark.e2e


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def tracked(digits_pipeline):
    """conftest.digits_pipeline, the session's one run of the digits jobs: sample -> preprocess
    -> train (2 ranks on Spark) -> failed and passing promotion -> score
    models:/digits-cnn@champion, all tracked on the session's MLflow server."""
    if not digits_pipeline["tracked"]:
        pytest.skip("the full mlflow (its server) is not installed here: the test extra of the default profile")
    return digits_pipeline


def _manifests(t):
    cfg = t["cfg"]
    pre = manifest.read(cfg.uri("curated", "digits", lake.get_latest(cfg.uri("curated", "digits"))))
    run_id = lake.get_latest(cfg.uri("models", "digits-cnn"))
    train = manifest.read(cfg.uri("models", "digits-cnn", run_id))
    score = manifest.read(cfg.uri("predictions", "digits-cnn", f"dt={t['date']}"))
    return pre, train, score


def test_training_run_is_tracked(tracked):
    c = _client(tracked["uri"])
    pre, train, _ = _manifests(tracked)
    epochs = tracked["cfg"].train.epochs
    run = c.get_run(train["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(epochs) and run.data.params["dataset.name"] == "digits"
    tags = run.data.tags
    assert tags["dataset"] == "digits" and tags["dataset_version"] == pre["version"]
    assert tags["world_size"] == "2" and tags["launcher"] == "spark" and tags["device"] == "cpu"
    app = "app-" if tracked["on_cluster"] else "local-"  # a standalone master's application, or local[2]'s
    assert tags["spark_application_id"].startswith(app) and tags["code_version"] == train["code_version"]
    assert train["metrics"]["epochs_tracked"] is True  # rank 0 logged them, on a Spark executor, as they ran
    history = lake.read_json(f"{train['uri']}/history.json")
    for key in ("train_loss", "val_loss", "val_accuracy", "samples_per_s", "data_wait_fraction", "lr"):
        logged = c.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == list(range(epochs)), key
        assert [m.value for m in logged] == pytest.approx([h[key] for h in history]), key
    assert run.data.metrics["test_accuracy"] == pytest.approx(train["metrics"]["test_accuracy"])
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(train["metrics"]["val_accuracy"])
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"training_curve.png", "confusion_matrix.png", "config.json", "preprocess_manifest.json",
            "_manifest.json"} <= names
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="preprocess_manifest.json",
                                               tracking_uri=tracked["uri"])
    with open(path) as f:
        assert json.load(f)["version"] == pre["version"]


def test_version_registered_and_promoted_through_the_gate(tracked):
    c = _client(tracked["uri"])
    _, train, _ = _manifests(tracked)
    cand = c.get_model_version_by_alias("digits-cnn", "candidate")
    champ = c.get_model_version_by_alias("digits-cnn", "champion")
    assert cand.version == champ.version == train["registry"]["version"]
    assert cand.run_id == train["mlflow_run_id"] and cand.tags["lake_run_id"] == train["run_id"]
    fail = tracked["gate_fails"]
    assert fail.returncode == 1 and "test_accuracy" in fail.stderr and "not >= 1.01" in fail.stderr
    unknown = tracked["gate_unknown"]
    assert unknown.returncode == 1 and "no metric 'test_f1'" in unknown.stderr
    for refused in (fail, unknown):  # one line each, no traceback
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stdout + refused.stderr
    assert "promoted digits-cnn version" in tracked["promote"].stdout
    bad = run([sys.executable, "jobs/promote.py", *tracked["s"], "--require", "accuracy about 1"], check=False)
    assert bad.returncode == 2 and "METRIC OP NUMBER" in bad.stderr


def test_alias_references_resolve_through_the_registry(tracked):
    cfg = tracked["cfg"]
    s = tracking.settings(cfg)
    run_id = lake.get_latest(cfg.uri("models", "digits-cnn"))
    for ref in ("digits-cnn@champion", "models:/digits-cnn@candidate", "digits-cnn@latest", f"digits-cnn@{run_id}"):
        name, rid, uri, _ = registry.resolve_ref(cfg.lake.root, ref, s)
        assert (name, rid) == ("digits-cnn", run_id), ref
    with pytest.raises(artifact.ModelNotFound, match="alias 'staging'"):
        registry.resolve_ref(cfg.lake.root, "digits-cnn@staging", s)
    off = tracking.settings(load_config("conf/digits.yaml", [f"lake.root={cfg.lake.root}", "tracking.enabled=false"]))
    assert registry.resolve_ref(cfg.lake.root, "digits-cnn@latest", off)[1] == run_id  # the lake alone
    with pytest.raises(artifact.ModelNotFound, match="tracking.enabled is false"):
        registry.resolve_ref(cfg.lake.root, "models:/digits-cnn@champion", off)


def test_score_run_and_lineage_lead_back_to_training_and_dataset(tracked):
    c = _client(tracked["uri"])
    pre, train, score = _manifests(tracked)
    assert score["model"]["registry"]["version"] == train["registry"]["version"]
    srun = c.get_run(score["mlflow_run_id"])
    assert srun.data.metrics["input_count"] == 179 == srun.data.metrics["output_count"]
    assert srun.data.metrics["quarantined_count"] == 0
    assert srun.data.tags["model_version"] == train["registry"]["version"] and srun.data.tags["date"] == tracked["date"]
    assert c.get_run(pre["mlflow_run_id"]).data.tags["dataset_version"] == pre["version"]
    p = run([sys.executable, "-m", "pipeline.ops.lineage", *tracked["s"], "--date", tracked["date"]])
    chain = json.loads(p.stdout)
    assert chain["score"]["mlflow_run_id"] == score["mlflow_run_id"]
    assert chain["model"]["registered_version"] == train["registry"]["version"]
    assert chain["training"]["mlflow_run_id"] == train["mlflow_run_id"]
    assert chain["dataset"]["version"] == pre["version"] and chain["dataset"]["mlflow_run_id"] == pre["mlflow_run_id"]


def test_every_manifest_and_run_records_cost(tracked):
    c = _client(tracked["uri"])
    for m in _manifests(tracked):
        cost = m["cost"]
        assert cost["wall_s"] > 0 and cost["driver_cpu_s"] > 0 and cost["driver_peak_rss_mb"] > 50, m["stage"]
        assert cost["executor_task_run_s"] > 0 and cost["executor_task_cpu_s"] > 0, m["stage"]
        assert cost["gpu_s"] == 0.0
        if m["stage"] == "train":
            assert cost["rank_cpu_s"] > 0 and cost["rank_peak_rss_mb"] > 50
        metrics = c.get_run(m["mlflow_run_id"]).data.metrics
        assert metrics["cost_wall_s"] == pytest.approx(cost["wall_s"]), m["stage"]
        assert metrics["cost_core_hours_per_1k_records"] > 0


def test_pyfunc_scores_raw_inputs_as_the_score_job_does(tracked):
    import mlflow

    # Both: an in-process training run earlier in the session leaves its own registry URI set.
    mlflow.set_tracking_uri(tracked["uri"])
    mlflow.set_registry_uri(tracked["uri"])
    model = mlflow.pyfunc.load_model("models:/digits-cnn@champion")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["content"]
    cfg = tracked["cfg"]
    date = tracked["date"]
    files = sorted(glob.glob(lake.local_path(cfg.resolve(cfg.dataset.score_source) + f"/dt={date}") + "/*"))
    out = model.predict(pd.DataFrame({"content": [open(f, "rb").read() for f in files]}))
    scored = pq.read_table(lake.local_path(cfg.uri("predictions", "digits-cnn", f"dt={date}"))).to_pandas()
    scored = scored.set_index(scored["path"].str.rsplit("/", n=1).str[1]).loc[[os.path.basename(f) for f in files]]
    assert list(out["prediction"]) == list(scored["prediction"])
    np.testing.assert_allclose(out["probability"], scored["probability"], rtol=1e-5)
    bad = model.predict(pd.DataFrame({"content": [b"not an image"]}))
    assert bad["reason"][0] == "not_an_image" and bad["prediction"][0] is None


def test_embedded_store_by_default_and_unreachable_server(tracked):
    """Same lake, no tracking.uri: the SQLite store under <lake>/mlflow; then a closed port. Its
    own model name: the session's digits run and its _latest stay as they were."""
    root = tracked["root"]
    name = "digits-embedded"
    s = ["--config", "conf/digits.yaml", "--set", f"lake.root={root}", "--set", "train.epochs=1",
         "--set", f"train.model_name={name}"]
    local = run([sys.executable, "jobs/train.py", *s, "--launcher", "local"])
    assert f"mlflow ui --backend-store-uri sqlite:///{root}/mlflow/mlflow.db" in local.stdout
    store = f"sqlite:///{root}/mlflow/mlflow.db"
    c = _client(store)
    cand = c.get_model_version_by_alias(name, "candidate")
    mlrun = c.get_run(cand.run_id)
    assert mlrun.data.tags["launcher"] == "local" and mlrun.data.params["train.epochs"] == "1"
    assert len(c.get_metric_history(mlrun.info.run_id, "train_loss")) == 1
    assert {a.path for a in c.list_artifacts(mlrun.info.run_id)} >= {"training_curve.png", "preprocess_manifest.json"}
    assert cand.tags["lake_run_id"] == mlrun.data.tags["lake_run_id"] == lake.get_latest(f"file://{root}/models/{name}")

    closed = f"http://127.0.0.1:{free_port()}"
    goes_on = run([sys.executable, "jobs/train.py", *s, "--launcher", "local", "--set", f"tracking.uri={closed}"])
    assert f"MLflow tracking at {closed} failed" in goes_on.stdout
    run_id = lake.get_latest(f"file://{root}/models/{name}")
    assert run_id != cand.tags["lake_run_id"]  # published, untracked
    m = manifest.read(f"file://{root}/models/{name}/{run_id}")
    assert m["mlflow_run_id"] is None and m["metrics"]["test_accuracy"] > 0 and m["cost"]["wall_s"] > 0
    stops = run([sys.executable, "jobs/train.py", *s, "--launcher", "local", "--set", f"tracking.uri={closed}",
                 "--set", "tracking.required=true"], check=False)
    assert stops.returncode == 1 and "tracking.required is true" in stops.stderr
    assert lake.get_latest(f"file://{root}/models/{name}") == run_id  # nothing new was published


def test_tracking_settings(tmp_path):
    from pipeline.core.config import ConfigError

    s = tracking.settings(load_config("conf/digits.yaml", [f"lake.root={tmp_path}"]))
    assert s["uri"] == f"sqlite:///{tmp_path}/mlflow/mlflow.db" and s["problem"] is None
    assert s["artifact_location"] == f"file://{tmp_path}/mlflow/artifacts" and s["experiment"] == "digits"
    assert tracking.ui_command(s).startswith(f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow/mlflow.db")
    remote = tracking.settings(load_config("conf/digits.yaml", ["lake.root=s3a://bucket/lake"]))
    assert "set tracking.uri to an MLflow server" in remote["problem"]
    server = tracking.settings(load_config("conf/digits.yaml", ["tracking.uri=http://mlflow:5000",
                                                                "tracking.experiment=nightly"]))
    assert (server["uri"], server["experiment"], tracking.ui_command(server)) == ("http://mlflow:5000", "nightly", None)
    with pytest.raises(ConfigError, match="tracking.required"):
        load_config("conf/digits.yaml", ["tracking.required=maybe"])
    with pytest.raises(ConfigError, match="tracking.server"):
        load_config("conf/digits.yaml", ["tracking.server=x"])
