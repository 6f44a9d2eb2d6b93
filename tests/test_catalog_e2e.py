"""A persistent catalog through spark-submit: tables written by one Spark application are read by
the next (Spark's Hive support, a Derby metastore and warehouse in a temporary directory). The
wine table has no id column: preprocess reads a catalog table, train fits the MLP, score reads
a query for the date, copies business keys into the predictions and writes a catalog table."""
from collections import Counter

import pyarrow.parquet as pq
import pytest

from conftest import WINE_DATE as DATE, WINE_QUERY as QUERY
from pipeline.spark import cli
from pipeline.core import lake, manifest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(wine_pipeline):
    return wine_pipeline  # conftest.wine_pipeline: the session's one run of the wine jobs


def test_a_catalog_table_without_an_id_preprocesses(run):
    cfg = run["cfg"]
    m = manifest.read(cfg.uri("curated", "wine", lake.get_latest(cfg.uri("curated", "wine"))))
    assert m["source"] == "table:cellar.labelled"
    assert m["input_count"] == 161 == m["output_count"] + m["quarantined_count"] and m["quarantined_count"] == 0
    assert m["label_names"] == ["cultivar_0", "cultivar_1", "cultivar_2"]
    ids = pq.read_table(lake.local_path(m["splits"]["train"]["uri"]), columns=["id"]).column(0).to_pylist()
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)  # hashes of the declared values


def test_the_model_learns_next_to_a_baseline(run):
    """The MLP against scikit-learn's logistic regression and the majority class, on the same
    curated splits."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    cfg = run["cfg"]
    metrics = lake.read_json(cfg.uri("models", "wine-mlp", lake.get_latest(cfg.uri("models", "wine-mlp")),
                                     "metrics.json"))
    accuracy = metrics["test_accuracy"]
    m = manifest.read(cfg.uri("curated", "wine", lake.get_latest(cfg.uri("curated", "wine"))))
    data = {s: pq.read_table(lake.local_path(m["splits"][s]["uri"])).to_pandas() for s in ("train", "test")}
    x = {s: np.stack(t["features"].values) for s, t in data.items()}
    baseline = LogisticRegression(max_iter=1000).fit(x["train"], data["train"]["label"]).score(
        x["test"], data["test"]["label"])
    majority = (data["test"]["label"] == data["train"]["label"].mode()[0]).mean()
    print(f"wine test accuracy: mlp {accuracy:.3f}, logistic regression {baseline:.3f}, majority class {majority:.3f}")
    assert accuracy >= 0.8 and accuracy >= baseline - 0.1 and accuracy > majority + 0.3, run["train"].stdout[-3000:]


def test_predictions_carry_the_business_keys_and_land_in_a_catalog_table(run):
    cfg = run["cfg"]
    m, t = run["predictions"]  # read right after the run: test_formats replaces the partition
    assert len(t) == 17 and set(t["dt"]) == {DATE} and t["lot"].str.startswith("lot-").all()
    # The query as written: its {date} is bound as a parameter when it runs (the manifest's date).
    assert m["source"] == QUERY and m["date"] == DATE and m["input_count"] == 17 == m["output_count"]
    truth = dict(ln.split(",") for ln in lake.read_bytes(
        cfg.uri("raw", "wine", "holdout_labels", f"dt={DATE}.csv")).decode().splitlines()[1:])
    assert sum(truth[k] == p for k, p in zip(t["lot"], t["prediction"])) >= 12
    table = pq.read_table(run["catalog"] / "warehouse" / "cellar.db" / "predictions" / f"dt={DATE}").to_pandas()
    assert sorted(table["lot"]) == sorted(t["lot"])


def test_bad_sources_name_themselves_with_their_exit_code(run):
    p = run["unknown_table"]
    assert p.returncode == cli.EXIT_NO_INPUT, p.stdout[-2000:]
    assert "score: no input: nothing to score for" in p.stdout + p.stderr and "cellar.nope" in p.stdout + p.stderr
    p = run["missing_path"]
    assert p.returncode == cli.EXIT_FAILED and "SourceError" in p.stdout + p.stderr and "nowhere does not exist" in \
        p.stdout + p.stderr
    for p in (run["unknown_table"], run["missing_path"]):  # the one line, not a traceback above it
        assert "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]


def test_a_model_of_a_catalog_table_is_registered_and_predicts_raw_rows(run):
    """A catalog table has no files to read an input example from: the registered model's comes
    from the fitted encoding. MLflow's own loader then predicts the day's rows as score did."""
    import mlflow
    import pandas as pd

    from pipeline.ops import tracking

    cfg = run["cfg"]
    d = cfg.uri("models", "wine-mlp", lake.get_latest(cfg.uri("models", "wine-mlp")))
    registry = manifest.read(d)["registry"]
    assert registry and registry["alias"] == "candidate", run["train"].stdout[-3000:]
    uri = tracking.settings(cfg)["uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/wine-mlp@candidate")
    columns = lake.read_json(f"{d}/model.json")["input"]["columns"]
    incoming = lake.local_path(cfg.resolve(cfg.dataset.score_source)) + f"/dt={DATE}"
    raw = pd.concat(pd.read_csv(f"{incoming}/{f}") for f in sorted(lake.listdir(f"file://{incoming}")))
    frame = raw[[*columns["numeric"], *columns["categorical"]]].astype({c: float for c in columns["numeric"]})
    out = model.predict(frame)
    _, scored = run["predictions"]
    # Lots are not unique: the same (lot, prediction) pairs, each as often.
    assert Counter(zip(raw["lot"], out["prediction"])) == Counter(zip(scored["lot"], scored["prediction"]))
