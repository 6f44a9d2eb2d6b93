"""Explanations at scoring (score.explain): completeness of integrated gradients, a planted
signal found, the per-kind columns, the catalog table's column, and the config's checks."""
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import BAD_DATE, CLEAN_DATE
from pipeline import preprocess, score, train
from pipeline.core import lake
from pipeline.core.config import ConfigError, TabularConf, load_config
from pipeline.ingest import tabular
from pipeline.kinds import tabular as tabular_kind
from pipeline.model import artifact, explain

IG = "score.explain.method=integrated_gradients"


def _published(cfg, name, date):
    return pq.read_table(lake.local_path(cfg.uri("predictions", name, f"dt={date}"))).to_pandas()


@pytest.mark.parametrize("override, key", [("score.explain.method=shap", "score.explain.method"),
                                           ("score.explain.top_k=0", "score.explain.top_k"),
                                           ("score.explain.n_steps=0", "score.explain.n_steps")])
def test_bad_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key) as e:
        load_config("conf/breast_cancer.yaml", [override])
    assert len(str(e.value).splitlines()) == 1


@pytest.fixture(scope="module")
def cancer(cancer_curated):
    cfg, _ = cancer_curated
    sets = [f"lake.root={cfg.lake.root}", "train.epochs=3", "train.model_name=cancer-explained",
            "score.model=cancer-explained@latest", "tracking.enabled=false"]
    train.run_local(load_config("conf/breast_cancer.yaml", sets))
    return sets


def test_tabular_rows_name_their_top_declared_columns_and_sum_to_the_output(spark, cancer):
    """Integrated gradients on the breast-cancer MLP: each row's top 3 declared columns (the one-hot
    size_band summed into its name), largest |attribution| first; the attributions of every row
    sum to f(x) - f(baseline) within 1%, checked here against the model's own float32 outputs."""
    cfg = load_config("conf/breast_cancer.yaml", [*cancer, IG])
    m = score.run(spark, cfg, BAD_DATE).manifest
    ex = m["explain"]
    assert ex["rows"] == m["output_count"] == 56 and ex["completeness"] >= 0.99, ex
    t = _published(cfg, "cancer-explained", BAD_DATE)
    declared = {*cfg.dataset.tabular.numeric, *cfg.dataset.tabular.categorical}
    for top in t["top_features"]:
        assert len(top) == 3 and {f["feature"] for f in top} <= declared
        mags = [abs(f["attribution"]) for f in top]
        assert mags == sorted(mags, reverse=True)

    # Independently: attributions of the encoded held-out rows against the float32 scoring path.
    model = artifact.load_model(cfg.lake.root, "cancer-explained@latest", device="cpu")
    tab = TabularConf(**model.spec["input"]["columns"])
    files = [u for u, s in lake.list_files(cfg.resolve(f"{cfg.dataset.score_source}/dt={BAD_DATE}")) if s]
    rec = tabular.validate(tabular.read_piece((files[0], 0, -1), tab, label_required=False)[0], [], tab,
                           label_required=False)
    x = tabular.encode(rec.take(np.flatnonzero(rec.good())), tab, model.spec["input"]["tabular"])
    request = tabular_kind.Tabular().explaining(model.spec, cfg.score.explain)
    out = model.predict_raw(x)
    attr, attributed, _ = explain.attribute(model, x, out, "integrated_gradients", 50, request.baseline)
    picked = out.argmax(1)
    f_base = model.predict_raw(np.tile(request.baseline.astype(np.float32), (len(x), 1)))
    explained = out[np.arange(len(x)), picked] - f_base[np.arange(len(x)), picked]
    assert explain.completeness(attr.reshape(len(x), -1).sum(1), explained).mean() >= 0.99
    # Named by declared column: the numerics as they are, the one-hot block of size_band summed.
    n_num = len(tab.numeric)
    summed = np.column_stack([attr[:, :n_num], attr[:, n_num:].sum(1)])
    names = [*tab.numeric, "size_band"]
    for row, top in zip(summed, request.reduce(attr)):
        assert [f["feature"] for f in top] == [names[j] for j in np.argsort(-np.abs(row), kind="stable")[:3]]
        assert np.allclose([f["attribution"] for f in top], row[np.argsort(-np.abs(row), kind="stable")[:3]])


def test_the_catalog_table_gains_the_column_and_holds_nulls_when_off(spark, cancer):
    cfg = load_config("conf/breast_cancer.yaml", [*cancer, "score.output_table=cancer_explained"])
    other = "2026-04-03"
    src = cfg.resolve(cfg.dataset.score_source)
    os.makedirs(lake.local_path(f"{src}/dt={other}"), exist_ok=True)
    with open(lake.local_path(f"{src}/dt={BAD_DATE}/cases.csv")) as f:
        lines = f.read().splitlines()[:6]
    with open(lake.local_path(f"{src}/dt={other}/cases.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    score.run(spark, cfg, other)  # explanations off: the table is created without the column
    score.run(spark, load_config("conf/breast_cancer.yaml", [*cancer, "score.output_table=cancer_explained", IG,
                                                             "score.explain.top_k=2"]), BAD_DATE)
    t = spark.table("cancer_explained").toPandas()
    assert "top_features" in t.columns
    on, off = t[t["dt"] == BAD_DATE], t[t["dt"] == other]
    assert len(on) == 56 and all(len(v) == 2 for v in on["top_features"])
    assert len(off) == 5 and off["top_features"].isna().all()


def test_a_planted_signal_is_the_top_two(spark, tmp_path):
    """A table whose label depends on 2 of its 10 columns (a regression, so what is explained is
    the prediction itself): those two are the top 2 of nearly every row. Every column is two
    clusters, at -1 and +1: a row whose value sits at the train mean (the baseline) owes its
    prediction nothing to it, so with normal columns the top 2 miss wherever a signal column is
    near 0 (about 10% of rows here), which is the attributions being right, not finding the signal."""
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.choice([-1.0, 1.0], size=(n, 10)) + rng.normal(scale=0.25, size=(n, 10))
    names = [f"x{i}" for i in range(10)]
    frame = pd.DataFrame(x, columns=names).assign(id=[f"r{i}" for i in range(n)], label=2 * x[:, 2] - 2 * x[:, 7])
    cfg = load_config("conf/breast_cancer.yaml", [
        f"lake.root={tmp_path}", "dataset.name=planted", "dataset.source=raw/planted/labelled",
        "dataset.score_source=raw/planted/incoming", "dataset.tabular.label_column=label",
        f"dataset.tabular.numeric=[{', '.join(names)}]", "dataset.tabular.categorical=[]", "train.task=regression",
        "train.model_name=planted", "train.epochs=5", "train.batch_size=32", "train.optimizer=adam", "train.lr=0.003",
        "train.weight_decay=0.0", "score.model=planted@latest",
        "tracking.enabled=false", "preprocess.files_per_split=1", IG, "score.explain.top_k=2"])
    for where, rows in [("labelled", frame.iloc[:1700]), (f"incoming/dt={CLEAN_DATE}", frame.iloc[1700:].drop(columns="label"))]:
        os.makedirs(tmp_path / "raw" / "planted" / where)
        rows.to_csv(tmp_path / "raw" / "planted" / where / "rows.csv", index=False)
    preprocess.run(spark, cfg)
    train.run_local(cfg)
    m = score.run(spark, cfg, CLEAN_DATE).manifest
    t = _published(cfg, "planted", CLEAN_DATE)
    found = np.mean([{f["feature"] for f in top} == {"x2", "x7"} for top in t["top_features"]])
    print(f"\nplanted signal: top 2 = {{x2, x7}} on {found:.4f} of {len(t)} rows; explain {m['explain']}")
    assert len(t) == 300 and found >= 0.95, found
    assert m["explain"]["completeness"] >= 0.99, m["explain"]


def test_images_get_a_map_at_the_input_size_and_overlays_in_the_run(spark, digits_curated):
    cfg, _ = digits_curated
    sets = [f"lake.root={cfg.lake.root}", "train.epochs=1", "train.model_name=digits-explained",
            "score.model=digits-explained@latest"]
    train.run_local(load_config("conf/digits.yaml", [*sets, "tracking.enabled=false"]))
    cfg = load_config("conf/digits.yaml", [*sets, IG])
    m = score.run(spark, cfg, CLEAN_DATE).manifest
    print(f"\ndigits: explain {m['explain']}")
    assert m["explain"]["rows"] == m["output_count"] == 179 and m["explain"]["completeness"] >= 0.99, m["explain"]
    t = _published(cfg, "digits-explained", CLEAN_DATE)
    maps = np.stack([np.frombuffer(b, np.float32) for b in t["attribution"]])
    assert maps.shape == (179, 8 * 8) and np.isfinite(maps).all() and (np.abs(maps).sum(1) > 0).all()
    if m["mlflow_run_id"]:  # tracked (the full mlflow is installed): the first 8 images by path, as PNGs
        from mlflow import MlflowClient
        from PIL import Image

        from pipeline.ops import tracking

        s = tracking.settings(cfg)
        client = MlflowClient(tracking_uri=s["uri"])
        files = [f.path for f in client.list_artifacts(m["mlflow_run_id"], "explanations")]
        first = sorted(t["path"])[:8]
        assert len(files) == 8 and [f.split("_", 1)[1] for f in sorted(files)] == \
            [f"{p.rsplit('/', 1)[-1].rsplit('.', 1)[0]}.png" for p in first]
        local = client.download_artifacts(m["mlflow_run_id"], sorted(files)[0])
        assert Image.open(local).size == (256, 256)


def test_a_forecast_is_explained_per_input_column_and_its_sum_is_the_forecast_change(spark, co2_curated):
    """An LSTM on the weekly CO2: what is explained is the forecast's sum over the horizon; the
    window's attributions summed per input column (here the one, co2) are that sum's change from
    the baseline window (the train means), and every forecast row of the series carries it."""
    base, _ = co2_curated
    sets = [f"lake.root={base.lake.root}", "train.model_name=co2-explained", "train.hidden=[8]", "train.epochs=1",
            "train.num_proc=1", "tracking.enabled=false", "score.model=co2-explained@latest"]
    train.run_local(load_config("conf/co2.yaml", sets))
    cfg = load_config("conf/co2.yaml", [*sets, IG])
    m = score.run(spark, cfg, CLEAN_DATE).manifest
    ex = m["explain"]
    assert ex["rows"] == 1 and ex["completeness"] == 1.0, ex  # one series, one forecast explained
    t = _published(cfg, "co2-explained", CLEAN_DATE)
    assert len(t) == cfg.dataset.sequence.horizon
    tops = [list(v) for v in t["top_features"]]
    assert all(top == tops[0] for top in tops) and [f["feature"] for f in tops[0]] == ["co2"]
    # The one column's attribution is the explained change itself, so it matches the manifest's gap.
    assert abs(tops[0][0]["attribution"]) > 0 and ex["max_gap"] <= 0.01 * abs(tops[0][0]["attribution"]) + 1e-4
