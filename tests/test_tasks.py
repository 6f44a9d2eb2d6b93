"""Task types end to end on real bundled data: the stacked LSTM on statsmodels' sunspots against
persistence and a linear autoregression on the same windows, and a regression MLP on
scikit-learn's diabetes table against LinearRegression on the same split. The three stages run
on the session's Spark, training on two Horovod ranks as under spark-submit: what is tested
here is the tasks; the command line is tested by the sample pipelines (tests/conftest.py)."""
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, write_sample
from pipeline import preprocess, score, train
from pipeline.core import lake, manifest
from pipeline.core.config import load_config

DATE = "2026-04-01"


def _jobs(spark, conf, root, *train_overrides):
    write_sample(conf, root, DATE)
    base = [f"lake.root={root}", "tracking.enabled=false"]  # tracking is tested in test_tracking.py
    cfg = load_config(conf, base)
    seconds = {}
    for stage, call in (("preprocess", lambda: preprocess.run(spark, cfg)),
                        ("train", lambda: train.run(spark, load_config(conf, [*base, *train_overrides]))),
                        ("score", lambda: score.run(spark, cfg, DATE))):
        t0 = time.perf_counter()
        call()
        seconds[stage] = time.perf_counter() - t0
    print("\n" + ", ".join(f"{stage} {s:.1f}s" for stage, s in seconds.items()) + f" ({conf})")
    return cfg


def _windows(m, split):
    t = pq.read_table(lake.local_path(m["splits"][split]["uri"])).to_pandas()
    return np.stack(t["features"].to_numpy()).astype(np.float64), np.stack(t["label"].to_numpy()).astype(np.float64)


# conf/sunspots.yaml's 60 epochs at half this rate reach a lower RMSE; 25 suffice for the test.
SUNSPOTS_TRAIN = ("train.epochs=25", "train.lr=0.001")


@pytest.fixture(scope="module")
def sunspots(spark, tmp_path_factory):
    return _jobs(spark, "conf/sunspots.yaml", tmp_path_factory.mktemp("sunspots"), *SUNSPOTS_TRAIN)


def test_stacked_lstm_beats_persistence_and_linear_autoregression(sunspots):
    from sklearn.linear_model import LinearRegression

    cfg = sunspots
    data = manifest.read(cfg.uri("curated", "sunspots", lake.get_latest(cfg.uri("curated", "sunspots"))))
    run_id = lake.get_latest(cfg.uri("models", "sunspots-lstm"))
    metrics = lake.read_json(cfg.uri("models", "sunspots-lstm", run_id, "metrics.json"))
    spec = lake.read_json(cfg.uri("models", "sunspots-lstm", run_id, "model.json"))
    assert spec["model"]["arch"] == "lstm" and spec["model"]["hidden"] == [64, 64, 64]
    (x_train, y_train), (x_test, y_test) = _windows(data, "train"), _windows(data, "test")
    norm = data["sequence"]["normalization"]
    k = len(data["sequence"]["columns"])
    persistence = x_test[:, -k] * norm["std"][0] + norm["mean"][0]  # the last observed value
    rmse = lambda p: float(np.sqrt(np.mean((p.reshape(y_test.shape) - y_test) ** 2)))  # noqa: E731
    linear = LinearRegression().fit(x_train, y_train).predict(x_test)
    assert metrics["test_count"] == len(y_test) == data["splits"]["test"]["count"]
    print(f"\nsunspots test RMSE on {len(y_test)} windows: stacked LSTM {metrics['test_rmse']:.2f}, "
          f"persistence {rmse(persistence):.2f}, linear autoregression {rmse(linear):.2f}; "
          f"LSTM MAE {metrics['test_mae']:.2f}, R2 {metrics['test_r2']:.3f}")
    assert metrics["test_rmse"] < rmse(persistence)
    assert metrics["test_rmse"] < rmse(linear)


def test_score_forecasts_the_next_horizon_values_per_series(sunspots):
    cfg = sunspots
    part = cfg.uri("predictions", "sunspots-lstm", f"dt={DATE}")
    t = pq.read_table(lake.local_path(part)).to_pandas()
    assert t["series"].tolist() == [""] and t["step"].tolist() == [1]
    assert t["time"].tolist() == ["2008"] and np.isfinite(t["prediction"]).all()
    m = manifest.read(part)
    assert m["input_count"] == cfg.dataset.sequence.window + 8 == m["output_count"] + m["quarantined_count"]
    assert m["forecast_rows"] == 1
    truth = float(lake.read_bytes(cfg.uri("raw", "sunspots", "holdout_labels", f"dt={DATE}.csv")).decode()
                  .splitlines()[1].split(",")[1])
    print(f"\nsunspots 2008 forecast {t['prediction'].iloc[0]:.1f}, observed {truth:.1f}")


# Adam, the best epoch by val RMSE: the MLP would otherwise overfit 300 rows.
DIABETES_TRAIN = ("train.optimizer=adam", "train.lr=0.003", "train.epochs=15", "train.monitor=val_rmse")


def test_diabetes_regression_is_within_0_05_r2_of_linear_regression(spark, tmp_path_factory):
    from pipeline.ingest import tabular

    if not hasattr(tabular, "label_stats") or not (ROOT / "conf" / "diabetes.yaml").exists():
        pytest.skip("this tabular ingest has no numeric (regression) labels yet")
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score

    cfg = _jobs(spark, "conf/diabetes.yaml", tmp_path_factory.mktemp("diabetes"), *DIABETES_TRAIN)
    data = manifest.read(cfg.uri("curated", "diabetes", lake.get_latest(cfg.uri("curated", "diabetes"))))
    run_id = lake.get_latest(cfg.uri("models", "diabetes-mlp"))
    metrics = lake.read_json(cfg.uri("models", "diabetes-mlp", run_id, "metrics.json"))

    def split(name):
        t = pq.read_table(lake.local_path(data["splits"][name]["uri"])).to_pandas()
        return np.stack(t["features"].to_numpy()), t["label"].to_numpy(np.float64)

    (x_train, y_train), (x_test, y_test) = split("train"), split("test")
    linear = LinearRegression().fit(x_train, y_train).predict(x_test)
    r2, rmse = r2_score(y_test, linear), float(np.sqrt(mean_squared_error(y_test, linear)))
    print(f"\ndiabetes on the same {len(y_test)} test rows: MLP R2 {metrics['test_r2']:.3f}, RMSE "
          f"{metrics['test_rmse']:.1f}, MAE {metrics['test_mae']:.1f}; LinearRegression R2 {r2:.3f}, RMSE {rmse:.1f}")
    assert metrics["test_count"] == len(y_test)
    assert metrics["test_r2"] >= r2 - 0.05
    # score writes a float prediction in the label's units for every held-out patient
    part = cfg.uri("predictions", "diabetes-mlp", f"dt={DATE}")
    t = pq.read_table(lake.local_path(part)).to_pandas()
    truth = dict(line.split(",") for line in lake.read_bytes(
        cfg.uri("raw", "diabetes", "holdout_labels", f"dt={DATE}.csv")).decode().splitlines()[1:])
    assert t["prediction"].dtype == np.float64 and len(t) == len(truth) == 44
    err = t["prediction"].to_numpy() - np.array([float(truth[i]) for i in t["id"]])
    assert np.sqrt(np.mean(err ** 2)) < np.std([float(v) for v in truth.values()])
