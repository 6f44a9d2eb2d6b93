"""Batch scoring: idempotent partitions, quarantine, model loads, clear errors."""
import hashlib
import os

import pyarrow.parquet as pq
import pytest

from conftest import BAD_DATE, CLEAN_DATE, spark_submit
from pipeline.model import artifact
from pipeline.spark import cli
from pipeline.core import lake, manifest
from pipeline import score, train
from pipeline.ingest import tabular, tabular_tasks
from pipeline.core.config import load_config

D1, D2 = BAD_DATE, CLEAN_DATE  # conftest: held-out files with bad records for D1, clean for D2
CANCER = "cancer-scored"


@pytest.fixture(scope="module")
def digits(digits_curated):
    cfg, _ = digits_curated
    cfg = load_config("conf/digits.yaml", [f"lake.root={cfg.lake.root}", "train.epochs=3"])
    train.run_local(cfg)
    return cfg


@pytest.fixture(scope="module")
def cancer(cancer_curated):
    cfg, _ = cancer_curated
    cfg = load_config("conf/breast_cancer.yaml", [f"lake.root={cfg.lake.root}", "train.epochs=5",
                                                  f"train.model_name={CANCER}", f"score.model={CANCER}@latest"])
    train.run_local(cfg)
    return cfg


def _partition(cfg, date, name="digits-cnn"):
    return cfg.uri("predictions", name, f"dt={date}")


def _table(uri):
    return pq.read_table(lake.local_path(uri)).to_pandas().sort_values(pq.read_table(lake.local_path(uri)).column_names[0])


def _digest(uri):
    path = lake.local_path(uri)
    h = hashlib.sha256()
    for f in sorted(os.listdir(path)):
        with open(os.path.join(path, f), "rb") as fh:
            h.update(f.encode() + fh.read())
    return h.hexdigest()


def test_nightly_runs_are_idempotent_per_date(spark, digits):
    m1 = score.run(spark, digits, D1).manifest
    m2 = score.run(spark, digits, D2).manifest
    d2_before = _digest(_partition(digits, D2))
    first = _table(_partition(digits, D1))
    again = score.run(spark, digits, D1).manifest  # the scheduler re-runs D1
    second = _table(_partition(digits, D1))
    assert len(first) == len(second) == m1["output_count"] == again["output_count"] == 179
    cols = [c for c in first.columns if c != "scored_at"]  # scored_at records when, so it moves
    assert first[cols].reset_index(drop=True).equals(second[cols].reset_index(drop=True))
    assert _digest(_partition(digits, D2)) == d2_before  # other dates untouched
    assert sorted(d for d in lake.listdir(digits.uri("predictions", "digits-cnn")) if d.startswith("dt=")) == \
        [f"dt={D1}", f"dt={D2}"]
    assert not [d for d in lake.listdir(digits.uri("predictions", "digits-cnn", "_staging"))]
    assert m2["output_count"] == 179 and m2["quarantined_count"] == 0


def test_bad_files_are_quarantined_and_the_manifest_reconciles(spark, digits):
    m = score.run(spark, digits, D1).manifest
    assert m["input_count"] == 179 + 5 == m["output_count"] + m["quarantined_count"]
    assert m["quarantined_by_reason"] == {"empty_file": 1, "not_an_image": 1, "too_many_pixels": 1,
                                          "truncated_image": 1, "unsupported_mode": 1}
    q = pq.read_table(lake.local_path(m["quarantine_uri"])).to_pandas()
    assert set(q["stage"]) == {"score.prepare"} and len(q) == 5
    assert manifest.read(_partition(digits, D1))["run_id"] == m["run_id"]


def test_model_is_loaded_once_per_worker_not_per_batch(spark, digits):
    # A model no Python worker has loaded yet: workers keep their models across runs.
    sets = [f"lake.root={digits.lake.root}", "train.epochs=1", "train.model_name=digits-loads",
            "score.model=digits-loads@latest"]
    train.run_local(load_config("conf/digits.yaml", sets))
    small = load_config("conf/digits.yaml", [*sets, "score.batch_size=8"])
    large = load_config("conf/digits.yaml", [*sets, "score.batch_size=512"])
    m_small = score.run(spark, small, D2).manifest  # 179 rows: ~23 batches
    loads_small = m_small["model_loads"]
    loads_large = score.run(spark, large, D2).manifest["model_loads"]  # ~1 batch per task
    assert m_small["output_count"] == 179
    # local[2]: at most 2 Python workers, each loads the model once, whatever the batch count;
    # the second run's workers are the first run's (Spark reuses them), with the model loaded.
    assert 1 <= loads_small <= 2, loads_small
    assert loads_small + loads_large <= 2, (loads_small, loads_large)


def test_a_failed_swap_leaves_the_previous_partition_intact(spark, digits, monkeypatch):
    score.run(spark, digits, D2)
    before = _digest(_partition(digits, D2))
    real_move = lake.move

    def failing_move(src, dst):
        if "/_staging/" in src:
            raise OSError("simulated failure while publishing")
        return real_move(src, dst)

    monkeypatch.setattr(lake, "move", failing_move)
    with pytest.raises(OSError, match="simulated"):
        score.run(spark, digits, D2)
    monkeypatch.undo()
    assert _digest(_partition(digits, D2)) == before


def test_missing_model_or_run_is_a_clear_error(spark, digits):
    with pytest.raises(artifact.ModelNotFound, match="no trained model named 'ghost'"):
        score.run(spark, digits, D1, "ghost@latest")
    with pytest.raises(artifact.ModelNotFound, match=r"digits-cnn@20990101.*runs available: \['20"):
        score.run(spark, digits, D1, "digits-cnn@20990101T000000Z-000000")


def test_no_input_for_the_date(spark, digits):
    with pytest.raises(cli.NoInput, match="2030-01-01"):
        score.run(spark, digits, "2030-01-01")


def test_tabular_scoring_reuses_fitted_parameters_and_handles_unseen_values(spark, cancer):
    src = cancer.resolve(cancer.dataset.score_source)
    path = lake.local_path(f"{src}/dt={D2}")
    os.makedirs(path)
    with open(lake.local_path(f"{src}/dt={D1}/cases.csv")) as f:
        header, first = f.readline().strip(), f.readline().strip()
    fields = first.split(",")
    unseen = ",".join(["new-category", *fields[1:-1], "gigantic"])
    missing = ",".join(["missing-value", "", *fields[2:]])
    with open(f"{path}/cases.csv", "w") as f:
        f.write("\n".join([header, first, unseen, missing]) + "\n")
    m = score.run(spark, cancer, D2).manifest
    assert m["output_count"] == 3 and m["quarantined_count"] == 0
    t = _table(_partition(cancer, D2, CANCER)).set_index("id")
    assert set(t["prediction"]) <= {"benign", "malignant"}
    assert t.loc["new-category", "probabilities"] is not None


def test_tabular_bad_rows_are_quarantined(spark, cancer):
    m = score.run(spark, cancer, D1).manifest
    assert m["quarantined_by_reason"] == {"malformed_record": 1, "non_finite": 2, "wrong_type": 1}
    assert m["input_count"] == m["output_count"] + m["quarantined_count"] == 56 + 4
    # The good rows of a batch that also holds bad ones are scored too (pandas 3 reads the
    # reasons of such a batch as text with NaN for "none").
    t = _table(_partition(cancer, D1, CANCER))
    assert len(t) == 56 and t["prediction"].notna().all() and t["probabilities"].notna().all()


@pytest.mark.parametrize("change", ["added", "missing"])
def test_schema_drift_is_a_clear_error(spark, cancer, change):
    src = cancer.resolve(cancer.dataset.score_source)
    date = "2026-05-01" if change == "added" else "2026-05-02"
    path = lake.local_path(f"{src}/dt={date}")
    os.makedirs(path)
    with open(lake.local_path(f"{src}/dt={D1}/cases.csv")) as f:
        header, first = f.readline().strip(), f.readline().strip()
    if change == "added":
        header, first = header + ",new_sensor", first + ",1.0"
        match = r"not declared \['new_sensor'\]"
    else:
        header, first = header.replace(",mean_texture", ""), ",".join(first.split(",")[:2] + first.split(",")[3:])
        match = r"missing \['mean_texture'\]"
    with open(f"{path}/cases.csv", "w") as f:
        f.write(header + "\n" + first + "\n")
    with pytest.raises(tabular.SchemaDriftError, match=match):
        score.run(spark, cancer, date)


def test_exit_codes_through_spark_submit(digits):
    def submit(*args):
        return spark_submit("jobs/score.py", "--config", "conf/digits.yaml", "--set", f"lake.root={digits.lake.root}",
                            *args, master="local[1]", check=False, timeout=300)
    # spark-submit forwards the Python driver's stderr on its stdout: read both.
    no_input = submit("--date", "2031-01-01")
    assert no_input.returncode == cli.EXIT_NO_INPUT, no_input.stdout[-2000:]
    assert "score: no input: nothing to score for 2031-01-01" in no_input.stdout + no_input.stderr
    bad_model = submit("--date", D1, "--model", "ghost@latest")
    assert bad_model.returncode == cli.EXIT_FAILED and "ModelNotFound" in bad_model.stdout + bad_model.stderr
    bad_config = submit("--date", D1, "--set", "score.batch_size=many")
    assert bad_config.returncode == cli.EXIT_BAD_CONFIG
    assert "score.batch_size: expected an integer" in bad_config.stdout + bad_config.stderr


@pytest.mark.parametrize("mode, date, by_reason, kept", [
    ("quarantine", "2026-06-01", {"duplicate_id": 2, "duplicate_row": 1, "value_too_long": 1}, [0, 2]),
    ("keep_first", "2026-06-02", {"duplicate_id": 1, "duplicate_row": 1, "value_too_long": 1}, [0, 1, 2]),
    ("error", "2026-06-03", None, None),
])
def test_tabular_duplicate_ids_and_long_values_when_scoring(spark, cancer, mode, date, by_reason, kept):
    """One prediction per id: a copy of a row is scored once, rows of one id that differ follow
    dataset.tabular.duplicates; a 1 MB category is quarantined, never scored."""
    src = cancer.resolve(cancer.dataset.score_source)
    with open(lake.local_path(f"{src}/dt={D1}/cases.csv")) as f:
        header, *lines = f.read().splitlines()
    rows = [ln for ln in lines if not ln.startswith("bad-")][:3]
    fields = rows[1].split(",")
    conflicting = ",".join([fields[0], repr(float(fields[1]) + 1.0), *fields[2:]])  # another mean_radius
    long = ",".join(["long-category", *rows[2].split(",")[1:-1], "x" * 1_000_000])
    path = lake.local_path(f"{src}/dt={date}")
    os.makedirs(path)
    with open(f"{path}/cases.csv", "w") as f:
        f.write("\n".join([header, rows[0], rows[1], rows[0], rows[2], conflicting, long]) + "\n")
    cfg = load_config("conf/breast_cancer.yaml", [f"lake.root={cancer.lake.root}", f"train.model_name={CANCER}",
                                                  f"score.model={CANCER}@latest", f"dataset.tabular.duplicates={mode}"])
    ids = [r.split(",")[0] for r in rows]
    if mode == "error":
        with pytest.raises(tabular_tasks.DuplicateId, match=f"id='{ids[0]}' is on 2 rows .*cases.csv"):
            score.run(spark, cfg, date)
        assert not lake.exists(_partition(cfg, date, CANCER))
        return
    m = score.run(spark, cfg, date).manifest
    assert m["input_count"] == 6 == m["output_count"] + m["quarantined_count"]
    assert m["quarantined_by_reason"] == by_reason
    t = _table(_partition(cfg, date, CANCER))
    assert sorted(t["id"]) == sorted(ids[i] for i in kept)  # one prediction per id
    q = pq.read_table(lake.local_path(m["quarantine_uri"])).to_pandas()
    assert q.loc[q["reason"] == "value_too_long", "detail"].tolist() == ["size_band: 1000000 bytes, over 1024"]
    assert set(q.loc[q["reason"] == "duplicate_row", "detail"]) == {f"id={ids[0]}"}
    assert set(q.loc[q["reason"] == "duplicate_id", "detail"]) == {f"id={ids[1]}"}
    assert all(s.endswith("/cases.csv") for s in q.loc[q["reason"].str.startswith("duplicate"), "source"])
