"""Drift at scoring for images and sequences (tables: test_drift.py), on bundled real data.

Images: scikit-learn's digits (the session's digits_curated lake, ~1290 train images), each
image's gray_mean and gray_std at the model's 8x8 input; every one of the 1797 scans scored again
flags nothing (chance PSI about 9 * (1/1797 + 1/1290) = 0.012); the same scans with their contrast
halved around each one's own mean move gray_std alone. Sequences: statsmodels' weekly CO2 (the
values themselves, ~1570 train weeks); its train weeks scored again flag nothing, the same weeks
20 ppm higher are flagged.
"""
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import png_bytes
from pipeline import score, train
from pipeline.core import lake
from pipeline.core.config import load_config
from pipeline.core.layout import LakeLayout
from pipeline.ingest.images import channel_stats
from pipeline.spark.cli import Drifted

SAME, SHIFTED = "2026-06-01", "2026-06-02"
FAIL_ABOVE = 0.25


def _scans():
    from sklearn.datasets import load_digits

    return np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)  # as sample_data writes them


def _lower_contrast(x: np.ndarray) -> np.ndarray:
    """Each scan's contrast halved around its own mean: the mean stays, the spread halves."""
    m = x.mean(axis=(1, 2), keepdims=True)
    return np.rint(m + (x - m) / 2).astype(np.uint8)


def _assert_run_tagged(cfg, m):
    """The drifted score's MLflow run ended FINISHED, tagged drift=true, with the PSIs as metrics."""
    from mlflow import MlflowClient

    from pipeline.ops import tracking

    run = MlflowClient(tracking_uri=tracking.settings(cfg)["uri"]).get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["drift"] == "true"
    for c in m["drift"]["failed"]:
        assert run.data.metrics[f"drift_psi_{c}"] == pytest.approx(m["drift"]["features"][c])


@pytest.fixture(scope="module")
def digits_model(spark, digits_curated):
    """A one-epoch CNN of its own on the session's curated digits, and two dates to score."""
    base, m = digits_curated
    sets = [f"lake.root={base.lake.root}", "train.model_name=drift-cnn", "train.epochs=1", "score.model=drift-cnn@latest",
            "dataset.score_source=raw/digits/drift", f"score.drift.fail_above={FAIL_ABOVE}"]
    cfg = load_config("conf/digits.yaml", [*sets, "tracking.enabled=false"])
    x = _scans()
    incoming = cfg.resolve(cfg.dataset.score_source)
    for date, images in ((SAME, x), (SHIFTED, _lower_contrast(x))):
        for i, img in enumerate(images):
            lake.write_bytes(f"{LakeLayout.dated(incoming, date)}/{i:04d}.png", png_bytes(img))
    train.run_local(cfg)
    return cfg, m, sets


def test_images_reference_is_the_train_split_channel_statistics(digits_model, spark):
    _, m, _ = digits_model
    ref = m["drift_reference"]
    assert sorted(ref["features"], key=lambda c: ref["features"][c]["position"]) == ["gray_mean", "gray_std"]
    # The exact statistics of the curated train images (the decoded 8x8 arrays the model trains on).
    blobs = spark.read.parquet(m["splits"]["train"]["uri"]).select("image").collect()
    x = np.stack([np.frombuffer(r["image"], np.uint8) for r in blobs])
    assert len(x) == m["splits"]["train"]["count"]
    # The statistics the tasks compute (from histograms) are numpy's, to rounding; the shares are
    # checked on the tasks' own values, since a value on a cut point may round either way.
    stats = channel_stats(x.reshape(len(x), 1, 8, 8))
    np.testing.assert_allclose(stats, np.stack([x.mean(axis=1), x.std(axis=1)], axis=1) / 255, rtol=0, atol=1e-12)
    for name, v in (("gray_mean", stats[:, 0]), ("gray_std", stats[:, 1])):
        f = ref["features"][name]
        assert 8 <= len(f["edges"]) <= 9 and f["null_share"] == 0.0
        exact = np.bincount(np.searchsorted(f["edges"], v, side="left"), minlength=len(f["edges"]) + 1) / len(v)
        assert f["shares"] == pytest.approx(exact.tolist(), abs=1e-9)
        assert min(f["shares"]) > 0.08  # deciles: each about a tenth of the train images
    assert ref["prediction"]["values"] == m["label_names"]


def test_images_scored_again_flag_nothing_and_lower_contrast_is_flagged(digits_model, spark):
    cfg, _, sets = digits_model
    same = score.run(spark, cfg, SAME).manifest
    d = same["drift"]
    assert same["output_count"] == 1797 and d["failed"] == [] and same["warnings"] == []
    assert set(d["features"]) == {"gray_mean", "gray_std"} and max(d["features"].values()) < 0.1, d
    tracked = load_config("conf/digits.yaml", sets)  # the lake's own MLflow store
    with pytest.raises(Drifted) as e:
        score.run(spark, tracked, SHIFTED)
    m = e.value.manifest
    _assert_run_tagged(tracked, m)
    d = m["drift"]
    assert d["failed"] == ["gray_std"] and d["features"]["gray_std"] > 1.0 and d["features"]["gray_mean"] < 0.1, d
    assert pq.read_table(lake.local_path(m["uri"])).num_rows == 1797  # the predictions are still published
    print(f"\nimages drift: same {same['drift']}; lower contrast {d}")


@pytest.fixture(scope="module")
def co2(co2_curated):
    """A tiny one-epoch LSTM of its own on the session's curated CO2, trained in-process; score
    inputs: the train weeks as they came (missing values left empty), and the same weeks 20 ppm
    higher."""
    base, m = co2_curated
    sets = [f"lake.root={base.lake.root}", "train.model_name=drift-lstm", "train.hidden=[8]", "train.epochs=1",
            "train.num_proc=1", "score.model=drift-lstm@latest", "dataset.score_source=raw/co2/drift",
            f"score.drift.fail_above={FAIL_ABOVE}"]
    cfg = load_config("conf/co2.yaml", [*sets, "tracking.enabled=false"])
    raw = lake.read_bytes(f"{cfg.resolve(cfg.dataset.source)}/series.csv").decode().splitlines()
    head, rows = raw[0], raw[1:]
    weeks = rows[:int(len(rows) * cfg.preprocess.split.train)]  # about the train split
    incoming = cfg.resolve(cfg.dataset.score_source)
    shifted = [f"{t},{float(v) + 20 if v else ''}" for t, v in (r.split(",") for r in weeks)]
    for date, lines in ((SAME, weeks), (SHIFTED, shifted)):
        lake.write_bytes(f"{LakeLayout.dated(incoming, date)}/series.csv", "\n".join([head, *lines, ""]).encode())
    train.run_local(cfg)
    return cfg, m, weeks, sets


def test_sequence_reference_is_the_train_values_with_missing_as_null(co2):
    import statsmodels.api as sm

    cfg, m, _, _ = co2
    ref = m["drift_reference"]
    assert list(ref["features"]) == ["co2"] and ref["features"]["co2"]["position"] == 0
    f = ref["features"]["co2"]
    data = sm.datasets.co2.load_pandas().data["co2"].to_numpy()
    # The train split: the first rows_by_split["train"] weeks that were kept (runs of more than
    # max_fill missing weeks are quarantined), the weeks filled by interpolation missing, as
    # scoring counts an empty value.
    missing = np.isnan(data)
    starts = np.flatnonzero(np.diff(np.r_[0, missing.astype(int), 0]))
    dropped = np.zeros(len(data), bool)
    for a, b in zip(starts[::2], starts[1::2]):
        dropped[a:b] = b - a > cfg.dataset.sequence.max_fill
    kept = data[~dropped][:m["sequence"]["rows_by_split"]["train"]]
    v = kept[~np.isnan(kept)]
    # approxQuantile's cut points (relative error 1e-3): train values, each at its decile give or
    # take 0.2% of the rows (the values have one decimal: many ties).
    assert len(f["edges"]) == 9 and set(f["edges"]) <= set(v.tolist())
    for q, e in zip(np.arange(1, 10) / 10, f["edges"]):
        assert np.mean(v < e) - 2e-3 <= q <= np.mean(v <= e) + 2e-3
    exact = np.bincount(np.searchsorted(f["edges"], v, side="left"), minlength=10) * (len(v) / len(kept)) / len(v)
    assert f["shares"] == pytest.approx(exact.tolist(), abs=1e-9)
    assert f["null_share"] == pytest.approx(np.isnan(kept).mean(), abs=1e-12) and f["null_share"] > 0
    assert ref["prediction"] == {k: v for k, v in f.items() if k != "position"}


def test_sequence_train_weeks_flag_nothing_and_a_shifted_series_is_flagged(co2, spark):
    cfg, _, weeks, sets = co2
    same = score.run(spark, cfg, SAME).manifest
    assert same["drift"]["failed"] == [] and same["drift"]["features"]["co2"] < 0.1, same["drift"]
    assert same["output_count"] + same["quarantined_count"] == len(weeks)
    tracked = load_config("conf/co2.yaml", sets)
    with pytest.raises(Drifted) as e:
        score.run(spark, tracked, SHIFTED)
    _assert_run_tagged(tracked, e.value.manifest)
    d = e.value.manifest["drift"]
    assert d["failed"] == ["co2"] and d["features"]["co2"] > 1.0, d
    assert d["prediction"] is not None
    print(f"\nsequence drift: same {same['drift']}; shifted {d}")
