"""Time series -> windows: gaps, missing values, splits by time, train-only normalisation,
quarantine, on real statsmodels series through Spark."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.core import lake
from pipeline import preprocess
from pipeline.samples import sample_data
from pipeline.ingest import sequence
from pipeline.core.config import SplitConf, load_config

DATE = "2026-02-01"


def _rows(t, v):
    return pd.DataFrame({"series": "s", "time": [str(x) for x in t], "t": np.asarray(t, float), "is_number": True,
                         "v": [np.array([x]) for x in v], "source": [f"row{i}" for i in range(len(t))]})


def test_prepare_series_fills_short_runs_quarantines_long_ones_and_cuts_segments():
    t = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16, 17, 17]  # 11 -> 15 is a jump in time
    v = [1, np.nan, 3, 4, np.nan, np.nan, np.nan, np.nan, 9, 10, 11, 15, 16, 17, 99]
    out = sequence.prepare_series(_rows(t, v).sample(frac=1, random_state=0), max_fill=2,
                                  split=SplitConf(train=0.5, val=0.25, test=0.25))
    out = out.sort_values(["t", "source"]).reset_index(drop=True)
    good = out[out["reason"].isna()]
    assert good["t"].tolist() == [1, 2, 3, 4, 9, 10, 11, 15, 16, 17]
    assert good[good["t"] == 2]["v"].iloc[0][0] == pytest.approx(2.0) and good[good["t"] == 2]["filled"].iloc[0]
    assert out[out["t"].isin([5, 6, 7, 8])]["reason"].tolist() == ["unfilled_gap"] * 4  # a run of 4 > max_fill
    assert out["reason"].tolist().count("duplicate_time") == 1
    # segments: before the unfilled run, after it, after the time jump
    assert good["segment"].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert good["split"].tolist() == ["train"] * 5 + ["val"] * 3 + ["test"] * 2
    assert good["step"].iloc[0] == 1.0


def test_windows_never_span_segments_or_straddle_splits():
    prepared = sequence.prepare_series(_rows(range(1, 21), np.arange(1, 21, dtype=float)), max_fill=1,
                                       split=SplitConf(train=0.6, val=0.2, test=0.2))
    prepared.loc[prepared["t"] > 15, "segment"] = 1  # pretend a gap after t=15
    w = sequence.windows_of(prepared, window=3, horizon=2, stride=1, mean=np.array([0.0]), std=np.array([2.0]))
    for _, r in w.iterrows():
        first = float(r["time"])
        assert list(r["label"]) == [first, first + 1]
        assert list(r["features"]) == pytest.approx([(first - 3) / 2, (first - 2) / 2, (first - 1) / 2])
        assert not (first <= 15 < first + 1)  # never across the segment boundary
    splits = {float(r["time"]): r["split"] for _, r in w.iterrows()}
    assert all(s == "train" for t, s in splits.items() if t + 1 <= 12)
    assert all(s == "test" for t, s in splits.items() if t > 16)


@pytest.fixture(scope="module")
def sunspots(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("sunspots")
    cfg = load_config("conf/sunspots.yaml", [f"lake.root={root}"])
    sample_data.write_series(cfg, DATE, bad_records=True)
    return cfg, preprocess.run(spark, cfg).manifest


def test_sunspots_preprocess_reconciles_splits_by_time_and_normalises_on_train(sunspots):
    import statsmodels.api as sm

    cfg, m = sunspots
    assert m["input_count"] == 308 + 4 == m["output_count"] + m["quarantined_count"]
    assert m["quarantined_by_reason"] == {"bad_time": 1, "malformed_record": 1, "non_finite": 1, "wrong_type": 1}
    q = pq.read_table(lake.local_path(m["quarantine_uri"])).to_pandas()
    assert sorted(q["reason"]) == sorted(m["quarantined_by_reason"]) and set(q["stage"]) == {"preprocess.validate"}
    seq = m["sequence"]
    assert seq["rows_by_split"] == {"train": 216, "val": 46, "test": 46}
    years = sm.datasets.sunspots.load_pandas().data
    train_values = years["SUNACTIVITY"].to_numpy()[:216]
    assert seq["normalization"]["mean"][0] == pytest.approx(train_values.mean())
    assert seq["normalization"]["std"][0] == pytest.approx(train_values.std())
    assert m["label_stats"] == {"mean": seq["normalization"]["mean"][0], "std": seq["normalization"]["std"][0]}
    last_time = {}
    for split in ("train", "val", "test"):
        t = pq.read_table(lake.local_path(m["splits"][split]["uri"])).to_pandas()
        assert len(t) == m["splits"][split]["count"] > 0
        times = t["time"].astype(int)
        last_time[split] = (times.min(), times.max())
        x = np.stack(t["features"].to_numpy())
        y = np.stack(t["label"].to_numpy())
        assert x.shape[1] == 12 and y.shape[1] == 1
        # the label is the raw value of that year; the history is the 12 years before, standardised
        row = t.iloc[0]
        year = int(row["time"])
        raw = years.set_index(years["YEAR"].astype(int))["SUNACTIVITY"]
        assert row["label"][0] == pytest.approx(raw.loc[year], rel=1e-6)
        expect = (raw.loc[year - 12:year - 1].to_numpy() - train_values.mean()) / train_values.std()
        assert row["features"] == pytest.approx(expect, rel=1e-5, abs=1e-6)
    assert last_time["train"][1] < last_time["val"][0] <= last_time["val"][1] < last_time["test"][0]


def test_co2_missing_weeks_are_filled_or_quarantined(co2_curated):
    import statsmodels.api as sm

    cfg, m = co2_curated
    data = sm.datasets.co2.load_pandas().data["co2"].to_numpy()[:-4]
    missing = np.isnan(data)
    edges = np.flatnonzero(np.diff(np.r_[0, missing.astype(int), 0]))
    runs = edges[1::2] - edges[::2]
    assert m["sequence"]["filled_values_rows"] == int(runs[runs <= 3].sum())
    assert m["quarantined_by_reason"] == {"unfilled_gap": int(runs[runs > 3].sum())}
    assert m["input_count"] == len(data) == m["output_count"] + m["quarantined_count"]
    assert m["sequence"]["time_kind"] == "timestamp" and m["sequence"]["step"] == 7 * 86400
    t = pq.read_table(lake.local_path(m["splits"]["train"]["uri"])).to_pandas()
    assert np.isfinite(np.stack(t["features"].to_numpy())).all()
    assert np.stack(t["label"].to_numpy()).shape[1] == 4
