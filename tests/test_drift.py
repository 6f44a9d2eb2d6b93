"""Drift at scoring: the train split's reference in the dataset manifest, the PSI of each feature
and of the predictions in the score manifest and MLflow, exit 4 past score.drift.fail_above.

The table is scikit-learn's digits read as one (1797 real 8x8 scans, 64 pixel columns p0..p63,
plus an ``ink`` band of each scan's total ink as a categorical). Chance PSI of a sample of n rows
against a reference of m rows over B occupied buckets is about (B - 1) * (1/n + 1/m): with the
1797 scored rows, the ~1260 train rows and 10 bins, 9 * (1/1797 + 1/1260) = 0.012 at most, far
under the 0.1 the unshifted test allows and the 0.25 that fails a run.
"""
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import spark_submit
from pipeline import preprocess, score, train
from pipeline.core import drift, lake, manifest
from pipeline.core.config import ConfigError, load_config
from pipeline.core.layout import LakeLayout
from pipeline.ops import tracking
from pipeline.spark import cli

SAME, SHIFTED = "2026-05-01", "2026-05-02"
MOVED = "p36"  # a pixel in the middle of the scan: ink in most digits, so its deciles are spread out
FAIL_ABOVE = 0.25


def _table():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data
    ink = x.sum(axis=1)
    band = np.where(ink < np.quantile(ink, 1 / 3), "light", np.where(ink < np.quantile(ink, 2 / 3), "medium", "heavy"))
    return x, d.target, band


def _csv(x, labels, band, with_label: bool) -> bytes:
    header = ["id", *(["digit"] if with_label else []), *(f"p{j}" for j in range(64)), "ink"]
    lines = [",".join(header)]
    for i in range(len(x)):
        lines.append(",".join([f"scan-{i:04d}", *([str(labels[i])] if with_label else []),
                               *(repr(float(v)) for v in x[i]), band[i]]))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def digits_table(spark, tmp_path_factory):
    """The table preprocessed and a small MLP trained on it, in-process; scoring inputs for
    SAME (every labelled row again) and SHIFTED (the same rows, MOVED + 3 standard deviations)."""
    root = tmp_path_factory.mktemp("drift")
    conf = {"lake": {"root": str(root)}, "spark": {"master": "local[2]", "shuffle_partitions": 2},
            "dataset": {"name": "digits_table", "kind": "tabular", "source": "raw/digits_table/labelled",
                        "score_source": "raw/digits_table/incoming",
                        "tabular": {"format": "csv", "id_column": "id", "label_column": "digit",
                                    "numeric": [f"p{j}" for j in range(64)], "categorical": ["ink"]}},
            "preprocess": {"split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 17}, "files_per_split": 1},
            "train": {"model_name": "digits-table-mlp", "arch": "mlp", "num_proc": 1, "epochs": 2,
                      "batch_size": 64, "lr": 0.01},
            "score": {"model": "digits-table-mlp@latest", "batch_size": 1024,
                      "drift": {"fail_above": FAIL_ABOVE, "bins": 10}}}
    path = root / "digits_table.yaml"
    path.write_text(yaml.safe_dump(conf))
    cfg = load_config(str(path))
    x, labels, band = _table()
    lake.write_bytes(f"{cfg.resolve(cfg.dataset.source)}/scans.csv", _csv(x, labels, band, True))
    incoming = cfg.resolve(cfg.dataset.score_source)
    lake.write_bytes(f"{LakeLayout.dated(incoming, SAME)}/scans.csv", _csv(x, labels, band, False))
    shifted = x.copy()
    j = int(MOVED[1:])
    shifted[:, j] += 3 * x[:, j].std()
    lake.write_bytes(f"{LakeLayout.dated(incoming, SHIFTED)}/scans.csv", _csv(shifted, labels, band, False))
    m = preprocess.run(spark, cfg).manifest
    train.run_local(cfg)
    return cfg, str(path), m, (x, labels, band)


def test_psi_formula_against_a_hand_computation():
    e, a = [0.5, 0.3, 0.2, 0.0], [0.4, 0.3, 0.1, 0.2]  # the last bucket: nulls, none in the train split
    by_hand = ((0.4 - 0.5) * math.log(0.4 / 0.5) + 0 + (0.1 - 0.2) * math.log(0.1 / 0.2)
               + (0.2 - 1e-4) * math.log(0.2 / 1e-4))  # the empty share counts as 1e-4
    assert drift.psi(e, a) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.022314 + 0.069315 + 1.519420, abs=1e-5)  # 0.1999 * ln 2000 dominates
    assert drift.psi(e, e) == 0.0
    ref = drift.numeric_reference([1.0, 2.0], [5, 3, 2, 0])  # rows <= 1, (1, 2], > 2, missing
    assert ref == {"kind": "numeric", "edges": [1.0, 2.0], "shares": [0.5, 0.3, 0.2], "null_share": 0.0}
    rep = drift.report({"features": {"v": ref}}, {"v": [4, 3, 1, 2]}, None, fail_above=1.0)
    assert rep == {"features": {"v": round(by_hand, 6)}, "prediction": None, "failed": ["v"]}
    assert drift.report({"features": {"v": ref}}, {"v": [4, 3, 1, 2]}, None, fail_above=0)["failed"] == []


def test_buckets_in_spark_match_the_reference_rules(spark):
    from pyspark.sql import functions as F

    from pipeline.kinds import drift as spark_drift

    df = spark.createDataFrame([(0.5,), (1.0,), (1.5,), (2.0,), (3.0,), (None,), (float("nan"),)], "v double")
    numeric = {"kind": "numeric", "edges": [1.0, 2.0]}  # buckets (, 1], (1, 2], (2, ), missing
    assert spark_drift.count_values(df, F.array("v"), [numeric]) == [[2, 2, 1, 2]]
    cats = spark.createDataFrame([(0.0,), (1.0,), (1.0,), (None,), (7.0,)], "c double")  # vocabulary indexes
    categorical = {"kind": "categorical", "values": ["x", "y"]}  # x, y, unknown (null, out of range)
    assert spark_drift.count_values(cats, F.array("c"), [categorical]) == [[1, 2, 2]]
    both = df.select(F.array("v", F.lit(1.0)).alias("a"))  # two features per row, in the references' order
    assert spark_drift.count_values(both, F.col("a"), [numeric, categorical]) == [[2, 2, 1, 2], [0, 7, 0]]


def test_preprocess_stores_the_train_split_reference(digits_table, spark):
    cfg, _, m, (x, labels, band) = digits_table
    ref = m["drift_reference"]
    assert sorted(ref["features"], key=lambda c: ref["features"][c]["position"]) == [*cfg.dataset.tabular.numeric, "ink"]
    train_ids = {r["id"] for r in spark.read.parquet(m["splits"]["train"]["uri"]).select("id").collect()}
    rows = np.array([i for i in range(len(x)) if f"scan-{i:04d}" in train_ids])
    assert len(rows) == m["splits"]["train"]["count"]
    p = ref["features"][MOVED]
    v = x[rows, int(MOVED[1:])]
    assert 5 <= len(p["edges"]) <= 9 and p["edges"] == sorted(p["edges"])
    # approxQuantile's cut points are train values, each near the exact decile it stands for.
    assert set(p["edges"]) <= set(v.tolist())
    exact_deciles = set(np.quantile(v, np.arange(1, 10) / 10, method="inverted_cdf").tolist())
    assert set(p["edges"]) == exact_deciles
    exact = np.bincount(np.searchsorted(p["edges"], v, side="left"), minlength=len(p["edges"]) + 1) / len(v)
    assert p["shares"] == pytest.approx(exact.tolist(), abs=1e-9) and p["null_share"] == 0.0
    assert ref["features"]["p0"]["edges"] == [0.0] and ref["features"]["p0"]["shares"] == [1.0, 0.0]  # never inked
    ink = ref["features"]["ink"]
    assert sorted(ink["values"]) == ["heavy", "light", "medium"] and ink["unknown_share"] == 0.0
    assert ink["shares"] == pytest.approx([np.mean(band[rows] == b) for b in ink["values"]])
    pred = ref["prediction"]
    assert pred["values"] == m["label_names"]
    assert pred["shares"] == pytest.approx([np.mean(labels[rows] == int(n)) for n in pred["values"]])


def test_scoring_the_training_rows_flags_nothing(digits_table, spark):
    cfg, _, _, _ = digits_table
    m = score.run(spark, cfg, SAME).manifest
    d = m["drift"]
    assert m["output_count"] == 1797 and d["failed"] == [] and m["warnings"] == []
    assert len(d["features"]) == 65
    assert max(d["features"].values()) < 0.1, sorted(d["features"].items(), key=lambda kv: -kv[1])[:3]
    # The two-epoch model's predicted classes are far from the train labels' shares: reported, and
    # no cause for failure (only feature PSIs fail a run).
    assert d["prediction"] > 0


def test_one_shifted_feature_is_flagged_alone_and_the_job_exits_4(digits_table):
    """Through spark-submit: exit 4 after publishing, the run FINISHED and tagged."""
    cfg, path, _, _ = digits_table
    p = spark_submit("jobs/score.py", "--config", path, "--date", SHIFTED, check=False)
    assert p.returncode == cli.EXIT_DRIFT, p.stdout[-3000:] + p.stderr[-3000:]
    m = manifest.read(cfg.uri("predictions", "digits-table-mlp", f"dt={SHIFTED}"))
    assert m["drift"]["failed"] == [MOVED]
    assert m["drift"]["features"][MOVED] > 1.0
    assert max(v for c, v in m["drift"]["features"].items() if c != MOVED) < 0.1
    assert pq.read_table(lake.local_path(m["uri"])).num_rows == 1797  # the predictions are still written
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=tracking.settings(cfg)["uri"]).get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["drift"] == "true"
    assert run.data.metrics[f"drift_psi_{MOVED}"] == pytest.approx(m["drift"]["features"][MOVED])
    assert "drift_psi_prediction" in run.data.metrics


def test_report_only_by_default_and_older_lakes_get_a_warning(digits_table, spark):
    cfg, path, m, _ = digits_table
    report_only = load_config(path, ["score.drift.fail_above=0"])
    assert score.run(spark, report_only, SHIFTED).manifest["drift"]["failed"] == []
    uri = m["uri"]
    old = {k: v for k, v in manifest.read(uri).items() if k != "drift_reference"}
    manifest.write(uri, old)  # a dataset version preprocessed before drift was computed
    try:
        out = score.run(spark, cfg, SHIFTED).manifest
    finally:
        manifest.write(uri, m)
    assert out["drift"] is None
    assert [w["code"] for w in out["warnings"]] == ["no_drift_reference"]


@pytest.mark.parametrize("setting", ["score.drift.fail_above=-0.1", "score.drift.bins=1", "score.drift.bins=ten"])
def test_bad_drift_settings_are_config_errors(setting):
    with pytest.raises(ConfigError, match="score.drift"):
        load_config("conf/breast_cancer.yaml", [setting])
