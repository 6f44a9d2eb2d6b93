"""preprocess.run on real files with every kind of bad record, in-process on the session fixture."""
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, job_env, submit_command
from pipeline.core import lake, manifest, quarantine
from pipeline import preprocess
from pipeline.samples import sample_data
from pipeline.ingest import tabular, tabular_tasks
from pipeline.core.config import load_config

DATE = "2026-02-01"
IMAGE_REASONS = {  # sample_data.bad_image_files() name -> reason
    "empty.png": "empty_file", "truncated.png": "truncated_image", "not_an_image.png": "not_an_image",
    "sixteen_bit.png": "unsupported_mode", "bomb.png": "too_many_pixels",
}
TABULAR_REASONS = {  # id written by sample_data.bad_tabular_lines -> reason
    "bad-malformed": "malformed_record", "bad-wrong_type": "wrong_type", "bad-missing_label": "missing_label",
    "bad-nan": "non_finite", "bad-inf": "non_finite",
}


def _quarantine(m):
    return pq.read_table(lake.local_path(m["quarantine_uri"])).to_pandas()


@pytest.fixture(scope="module")
def digits_run(spark, tmp_path_factory):
    cfg = load_config("conf/digits.yaml", [f"lake.root={tmp_path_factory.mktemp('lake')}"])
    sample_data.write_digits(cfg, DATE, bad_records=True)
    return cfg, preprocess.run(spark, cfg).manifest


@pytest.fixture(scope="module")
def tabular_run(spark, tmp_path_factory):
    cfg = load_config("conf/breast_cancer.yaml", [f"lake.root={tmp_path_factory.mktemp('lake')}"])
    sample_data.write_breast_cancer(cfg, DATE, bad_records=True)
    return cfg, preprocess.run(spark, cfg).manifest


@pytest.mark.parametrize("name, reason", sorted(IMAGE_REASONS.items()))
def test_each_bad_image_is_quarantined_with_its_reason(digits_run, name, reason):
    _, m = digits_run
    q = _quarantine(m)
    row = q[q["source"].str.endswith("/" + name)]
    assert len(row) == 1, q
    assert row["reason"].iloc[0] == reason and row["stage"].iloc[0] == "preprocess.validate"
    assert row["detail"].iloc[0]


@pytest.mark.parametrize("record_id, reason", sorted(TABULAR_REASONS.items()))
def test_each_bad_row_is_quarantined_with_its_reason(tabular_run, record_id, reason):
    _, m = tabular_run
    q = _quarantine(m)
    row = q[q["source"].str.contains(record_id, regex=False)]
    assert len(row) == 1, q
    assert row["reason"].iloc[0] == reason


def test_image_manifest_reconciles(digits_run):
    cfg, m = digits_run
    assert m["input_count"] == 1618 + 5
    assert m["input_count"] == m["output_count"] + m["quarantined_count"]
    assert m["quarantined_by_reason"] == {r: 1 for r in IMAGE_REASONS.values()}
    assert sum(s["count"] for s in m["splits"].values()) == m["output_count"]
    assert sum(sum(s["class_counts"].values()) for s in m["splits"].values()) == m["output_count"]
    written = sum(pq.read_table(lake.local_path(s["uri"])).num_rows for s in m["splits"].values())
    assert written == m["output_count"]
    assert lake.get_latest(cfg.uri("curated", "digits")) == f"v={m['version']}"
    # Normalisation comes from the train split: digits are mostly dark, mean well below 0.5.
    assert 0.1 < m["normalization"]["mean"][0] < 0.4 and 0.2 < m["normalization"]["std"][0] < 0.5


def test_tabular_manifest_reconciles_and_records_fitted_parameters(tabular_run):
    cfg, m = tabular_run
    assert m["input_count"] == 513 + 5 == m["output_count"] + m["quarantined_count"]
    assert m["quarantined_by_reason"] == {"malformed_record": 1, "wrong_type": 1, "missing_label": 1, "non_finite": 2}
    fitted = m["tabular"]
    assert set(fitted["numeric"]) == set(cfg.dataset.tabular.numeric)
    assert set(fitted["categorical"]["size_band"]) == {"small", "medium", "large"}
    assert fitted["num_features"] == 30 + 4
    t = pq.read_table(lake.local_path(m["splits"]["train"]["uri"])).to_pandas()
    feats = np.stack(t["features"].values)
    assert feats.shape[1] == 34 and feats.dtype == np.float32
    # Standardised with train statistics: train columns have mean ~0 and std ~1.
    np.testing.assert_allclose(feats[:, :30].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(feats[:, :30].std(0), 1, atol=1e-3)


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_json_lines_and_parquet_inputs_give_the_csv_result(spark, tabular_run, tmp_path, fmt):
    """The labelled CSV's good rows written as JSON lines or Parquet preprocess to the same
    splits, fitted parameters and features."""
    cfg, m = tabular_run
    good = pd.read_csv(lake.local_path(cfg.resolve(cfg.dataset.source) + "/cases.csv"), dtype=str,
                       keep_default_na=False, on_bad_lines="skip")
    good = good[~good["id"].str.startswith("bad-")]
    src = tmp_path / fmt
    src.mkdir()
    good = good.astype({c: float for c in cfg.dataset.tabular.numeric})  # typed, as an exporter writes them
    if fmt == "json":
        good.to_json(src / "cases.json", orient="records", lines=True)
    else:
        good.to_parquet(src / "cases.parquet", index=False)
    other = load_config("conf/breast_cancer.yaml", [f"lake.root={cfg.lake.root}", f"dataset.source=file://{src}",
                                                    f"dataset.name=cancer_{fmt}", f"dataset.tabular.format={fmt}"])
    m2 = preprocess.run(spark, other).manifest
    assert m2["input_count"] == m2["output_count"] == m["output_count"] and m2["quarantined_count"] == 0
    assert {s: v["count"] for s, v in m2["splits"].items()} == {s: v["count"] for s, v in m["splits"].items()}
    assert m2["tabular"]["categorical"] == m["tabular"]["categorical"]
    for c, p in m["tabular"]["numeric"].items():
        assert m2["tabular"]["numeric"][c] == pytest.approx(p, rel=1e-9)

    def train(man):
        t = pq.read_table(lake.local_path(man["splits"]["train"]["uri"])).to_pandas().set_index("id").sort_index()
        return np.stack(t["features"].values)
    np.testing.assert_allclose(train(m2), train(m), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["images", "tabular"])
def test_splits_are_identical_across_runs_with_different_partitioning(spark, digits_run, tabular_run, kind):
    cfg, m1 = digits_run if kind == "images" else tabular_run
    cfg2 = load_config(f"conf/{cfg.dataset.name}.yaml", [f"lake.root={cfg.lake.root}", "preprocess.files_per_split=3"])
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16384")  # many more input partitions or pieces
    try:
        m2 = preprocess.run(spark, cfg2).manifest
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")

    def membership(m):
        return {s: set(pq.read_table(lake.local_path(m["splits"][s]["uri"]), columns=["id"]).column(0).to_pylist())
                for s in preprocess.SPLITS}
    assert membership(m1) == membership(m2)
    assert m2["version"] != m1["version"]
    assert lake.get_latest(cfg.uri("curated", cfg.dataset.name)) == f"v={m2['version']}"


def test_too_many_bad_records_fails_loudly_and_keeps_latest(spark, digits_run):
    cfg, _ = digits_run
    before = lake.get_latest(cfg.uri("curated", "digits"))
    strict = load_config("conf/digits.yaml", [f"lake.root={cfg.lake.root}", "preprocess.max_bad_fraction=0.001"])
    with pytest.raises(quarantine.TooManyBadRecords, match=r"5 of 1623 records .* Top reasons: .*empty_file=1"):
        preprocess.run(spark, strict)
    assert lake.get_latest(cfg.uri("curated", "digits")) == before


def test_scoring_encodes_a_row_exactly_as_preprocess_did(spark, tabular_run, tmp_path):
    """The same raw record gives the same feature vector in preprocess and in score."""
    cfg, m = tabular_run
    curated = pq.read_table(lake.local_path(m["splits"]["train"]["uri"])).to_pandas().set_index("id")
    tab = cfg.dataset.tabular
    # The labelled source read the way score reads new data (label optional, the score tasks'
    # own function), encoded with the parameters saved in the manifest.
    pieces = tabular.plan(cfg.resolve(cfg.dataset.source), tab, 2, 1 << 27, label_required=False)
    tabular_tasks.write_pieces(pieces, f"file://{tmp_path}/plan")
    frames = tabular_tasks.score_records(iter([pd.DataFrame({"id": [0, 1]})]), f"file://{tmp_path}/plan", tab,
                                          m["tabular"], 64)
    enc = pd.concat(list(frames)).dropna(subset=["features"]).set_index("id")
    ids = curated.index[:50]
    np.testing.assert_array_equal(np.stack(enc.loc[ids, "features"].values), np.stack(curated.loc[ids, "features"].values))


def test_schema_drift_is_a_clear_error(spark, tmp_path):
    cfg = load_config("conf/breast_cancer.yaml", [f"lake.root={tmp_path}"])
    src = tmp_path / "drift"
    src.mkdir()
    (src / "a.csv").write_text("id,diagnosis,mean_radius,surprise\n1,benign,1.0,x\n")
    with pytest.raises(tabular.SchemaDriftError, match=r"missing \['mean_texture'.*not declared \['surprise'\]"):
        tabular.plan(f"file://{src}", cfg.dataset.tabular, 2, 1 << 27)


def test_a_killed_run_does_not_move_latest(digits_run):
    cfg, _ = digits_run
    parent = cfg.uri("curated", "digits")
    before = lake.get_latest(parent)
    versions_before = set(lake.listdir(parent))
    p = subprocess.Popen(submit_command("jobs/preprocess.py", "--config", "conf/digits.yaml",
                                        "--set", f"lake.root={cfg.lake.root}"), cwd=ROOT, env=job_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        new = set()
        while time.time() < deadline and not new:  # wait until the new version is being written
            new = {v for v in set(lake.listdir(parent)) - versions_before if v.startswith("v=")}
            time.sleep(0.2)
        assert new, "the job never started writing"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert lake.get_latest(parent) == before
    (v,) = new
    assert not lake.exists(f"{parent}/{v}/{manifest.MANIFEST}")
