"""The registered MLflow model of a table: mlflow.pyfunc.load_model("models:/NAME@ALIAS") predicts
raw rows as the score job does, and gives bad rows a reason instead of a prediction."""
import csv
import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from conftest import BAD_DATE
from pipeline import score, train
from pipeline.core import lake
from pipeline.core.config import load_config
from pipeline.core.layout import LakeLayout
from pipeline.ops import tracking
from untouched import Fence


def _candidate(cfg, name):
    """The model's @candidate version through MLflow's own loader, from the config's store."""
    import mlflow

    uri = tracking.settings(cfg)["uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/{name}@candidate")


def test_tabular_model_registers_and_predicts_raw_rows_as_the_score_job(spark, cancer_curated):
    cfg, _ = cancer_curated
    cfg = load_config("conf/breast_cancer.yaml", [f"lake.root={cfg.lake.root}", "train.model_name=cancer-pyfunc",
                                                  "train.epochs=3"])
    fence = Fence(cfg.lake.root)
    result = train.run_local(cfg)
    assert result.registry and result.registry["alias"] == "candidate", result.registry

    model = _candidate(cfg, "cancer-pyfunc")

    incoming = LakeLayout.dated(cfg.resolve(cfg.dataset.score_source), BAD_DATE)
    header, *lines = csv.reader(io.StringIO(lake.read_bytes(f"{incoming}/cases.csv").decode()))
    malformed = sum(len(r) != len(header) for r in lines)  # a frame cannot hold these; the job quarantines them
    raw = pd.DataFrame([r for r in lines if len(r) == len(header)], columns=header)
    tab = cfg.dataset.tabular
    # The signature types numeric columns as double: MLflow refuses text there ("twelve"), so the
    # caller turns it into NaN, which the model's validation then quarantines as the job does.
    frame = raw[[tab.id_column, *tab.numeric, *tab.categorical]].copy()
    frame[tab.numeric] = frame[tab.numeric].apply(pd.to_numeric, errors="coerce")
    out = model.predict(frame)
    assert len(out) == len(raw)

    m = score.run(spark, cfg, BAD_DATE, "cancer-pyfunc@latest").manifest
    scored = pq.read_table(lake.local_path(m["uri"])).to_pandas().set_index("id")
    good = out[out["reason"].isna()].assign(id=raw.loc[out["reason"].isna(), tab.id_column].values).set_index("id")
    assert len(good) == m["output_count"]
    assert len(out) - len(good) + malformed == sum(m["quarantined_by_reason"].values())
    scored = scored.loc[good.index]
    assert list(good["prediction"]) == list(scored["prediction"])
    np.testing.assert_allclose(good["probability"].astype(float), scored["probability"], rtol=1e-5)
    bad = out[out["reason"].notna()]
    assert len(bad) and bad["prediction"].isna().all() and (bad["label_index"] == -1).all()
    # The model, its MLflow store, the predictions and their quarantine; the data as it was.
    fence.check(may_write=("models/cancer-pyfunc", "mlflow", "predictions/cancer-pyfunc",
                           "quarantine/breast_cancer/score-"))


def test_sequence_model_registers_as_the_network_on_prepared_windows(spark, tmp_path):
    """Sequences are validated and windowed in Spark only: the registered model is the PyTorch
    network, which MLflow's pyfunc runs on prepared windows exactly as the artifact does."""
    from pipeline import preprocess
    from pipeline.model import artifact
    from pipeline.samples import sample_data

    cfg = load_config("conf/sunspots.yaml", [f"lake.root={tmp_path}", "train.epochs=2", "train.model_name=spots"])
    sample_data.write_series(cfg, BAD_DATE)
    m = preprocess.run(spark, cfg).manifest
    result = train.run_local(cfg)
    assert result.registry and result.registry["alias"] == "candidate", result.registry

    model = _candidate(cfg, "spots")
    windows = np.stack(pq.read_table(lake.local_path(m["splits"]["test"]["uri"]))
                       .column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    windows = windows.reshape(len(windows), cfg.dataset.sequence.window, -1)
    want = artifact.load_model(cfg.lake.root, "spots@latest", device="cpu").predict_raw(windows)
    np.testing.assert_allclose(np.asarray(model.predict(windows)), want, rtol=1e-4, atol=1e-5)
