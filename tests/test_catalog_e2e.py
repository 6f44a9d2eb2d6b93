"""A persistent catalog through spark-submit: tables written by one Spark application are read by
the next (Spark's Hive support, a Derby metastore and warehouse in a temporary directory). The
wine table has no id column: preprocess reads a catalog table, train fits the MLP, score reads
a query for the date, copies business keys into the predictions and writes a catalog table."""
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, hive_conf, job_env
from pipeline import cli, lake, manifest
from pipeline.config import load_config

pytestmark = pytest.mark.e2e
DATE = "2026-03-01"
QUERY = "query:SELECT * FROM cellar.incoming WHERE dt = '{date}'"


def _run(args, check=True):
    p = subprocess.run(args, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root, catalog = tmp_path_factory.mktemp("lake"), tmp_path_factory.mktemp("catalog")
    s = ["--set", f"lake.root={root}", "--set", "dataset.tabular.ignore=[lot, dt]"]
    _run([sys.executable, "-m", "pipeline.sample_data", "--config", "conf/wine.yaml", *s[:2], "--date", DATE])
    cfg = load_config("conf/wine.yaml", [f"lake.root={root}"])
    raw, new = (lake.local_path(cfg.resolve(u)) for u in (cfg.dataset.source, cfg.dataset.score_source))
    # The raw CSVs become typed Parquet tables in the catalog, written by one application...
    _run(["spark-sql", "--master", "local[1]", *hive_conf(catalog), "-e",
          f"CREATE DATABASE cellar;"
          f"CREATE TEMPORARY VIEW raw USING csv OPTIONS (path '{raw}', header 'true', inferSchema 'true');"
          f"CREATE TABLE cellar.labelled USING parquet AS SELECT * FROM raw;"
          f"CREATE TEMPORARY VIEW new USING csv OPTIONS (path '{new}/dt={DATE}', header 'true', inferSchema 'true');"
          f"CREATE TABLE cellar.incoming USING parquet PARTITIONED BY (dt) AS SELECT *, '{DATE}' AS dt FROM new;"])

    # ...and read by the next ones.
    def submit(job, *args, check=True):
        return _run(["spark-submit", "--master", "local[2]", *hive_conf(catalog), f"jobs/{job}.py",
                     "--config", "conf/wine.yaml", *s, *args], check=check)
    out = {"cfg": cfg, "catalog": catalog}
    out["preprocess"] = submit("preprocess", "--set", "dataset.source=table:cellar.labelled")
    out["train"] = submit("train")
    out["score"] = submit("score", "--date", DATE, "--set", f"dataset.score_source={QUERY}",
                          "--set", "score.passthrough=[lot, dt]", "--set", "score.output_table=cellar.predictions")
    out["unknown_table"] = submit("score", "--date", DATE, "--set", "dataset.score_source=table:cellar.nope",
                                  check=False)
    out["missing_path"] = submit("preprocess", "--set", f"dataset.source={root}/nowhere", check=False)
    return out


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

    line = [ln for ln in run["train"].stdout.splitlines() if ln.startswith("test accuracy:")][-1]
    accuracy = float(line.split()[2])
    cfg = run["cfg"]
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
    part = cfg.uri("predictions", "wine-mlp", f"dt={DATE}")
    t = pq.read_table(lake.local_path(part)).to_pandas()
    assert len(t) == 17 and set(t["dt"]) == {DATE} and t["lot"].str.startswith("lot-").all()
    m = manifest.read(part)
    assert m["source"] == QUERY.replace("{date}", DATE) and m["input_count"] == 17 == m["output_count"]
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
