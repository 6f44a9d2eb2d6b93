"""Every kind of source through preprocess (in-process on the session fixture): Spark formats and
reader options, partition columns, catalog tables and queries, bad sources; regression labels;
predictions written to a catalog table."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.spark import cli
from pipeline.core import lake
from pipeline import preprocess, score
from pipeline.samples import sample_data
from pipeline.ingest import sources
from pipeline.core.config import load_config

DATE = "2026-03-01"


@pytest.fixture(scope="module")
def wine(spark, tmp_path_factory):
    """The wine table (no id column) as plain CSV, preprocessed: the reference for every other source."""
    root = tmp_path_factory.mktemp("lake")
    cfg = load_config("conf/wine.yaml", [f"lake.root={root}"])
    sample_data.write_wine(cfg, DATE)
    m = preprocess.run(spark, cfg).manifest
    csv = lake.local_path(cfg.resolve(cfg.dataset.source)) + "/wines.csv"
    spark.read.option("header", "true").option("inferSchema", "true").csv(
        cfg.resolve(cfg.dataset.source)).write.mode("overwrite").saveAsTable("default.wine_typed")
    return cfg, m, pd.read_csv(csv, dtype=str, keep_default_na=False)


def _run(spark, cfg, name, source, *sets):
    other = load_config("conf/wine.yaml", [f"lake.root={cfg.lake.root}", f"dataset.name={name}",
                                           f"dataset.source={source}", *sets])
    return preprocess.run(spark, other).manifest


def _same_as_reference(m, ref):
    assert m["input_count"] == m["output_count"] == ref["output_count"] == 161
    assert {s: v["count"] for s, v in m["splits"].items()} == {s: v["count"] for s, v in ref["splits"].items()}
    assert m["tabular"]["categorical"] == ref["tabular"]["categorical"]
    for c, p in ref["tabular"]["numeric"].items():
        assert m["tabular"]["numeric"][c] == pytest.approx(p, rel=1e-9), c

    def train(man):
        t = pq.read_table(lake.local_path(man["splits"]["train"]["uri"])).to_pandas().sort_values("id")
        return t["id"].tolist(), np.stack(t["features"].values)
    (ia, xa), (ib, xb) = train(m), train(ref)
    assert ia == ib
    np.testing.assert_allclose(xa, xb, rtol=1e-6, atol=1e-7)


def test_orc_and_partitioned_parquet_with_a_partition_column_declared(spark, wine, tmp_path):
    cfg, ref, raw = wine
    df = spark.createDataFrame(raw).selectExpr(*[f"cast(`{c}` as double) as `{c}`" if c in cfg.dataset.tabular.numeric
                                                 else f"`{c}`" for c in raw.columns])  # typed numbers
    df.write.orc(str(tmp_path / "orc"))
    _same_as_reference(_run(spark, cfg, "wine_orc", tmp_path / "orc", "dataset.tabular.format=orc"), ref)
    # hue_band comes from the directory names (hue_band=dark/), declared as the categorical it is.
    df.write.partitionBy("hue_band").parquet(str(tmp_path / "parts"))
    _same_as_reference(_run(spark, cfg, "wine_parts", tmp_path / "parts", "dataset.tabular.format=parquet"), ref)


def test_csv_reader_options_pass_through(spark, wine, tmp_path):
    cfg, ref, raw = wine
    # sep=';' and a quoted newline inside a field (multiLine).
    odd = raw.copy()
    odd["lot"] = odd["lot"] + "\nsecond line"
    (tmp_path / "semi").mkdir()
    odd.to_csv(tmp_path / "semi" / "w.csv", sep=";", index=False, quoting=1)
    m = _run(spark, cfg, "wine_semi", tmp_path / "semi", "dataset.tabular.options={sep: ';', multiLine: 'true'}")
    _same_as_reference(m, ref)
    # Latin-1 text read with encoding: the accent survives.
    latin = raw.copy()
    latin["hue_band"] = latin["hue_band"].replace({"dark": "fonc\u00e9"})
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "w.csv").write_bytes(latin.to_csv(index=False).encode("latin-1"))
    m = _run(spark, cfg, "wine_latin", tmp_path / "latin", "dataset.tabular.options={encoding: ISO-8859-1}")
    assert sorted(m["tabular"]["categorical"]["hue_band"]) == ["bright", "fonc\u00e9"] and m["output_count"] == 161


def test_a_catalog_table_and_a_query(spark, wine):
    cfg, ref, raw = wine
    assert dict(spark.table("default.wine_typed").dtypes)["alcohol"] == "double"  # typed, not text
    _same_as_reference(_run(spark, cfg, "wine_table", "table:default.wine_typed"), ref)
    m = _run(spark, cfg, "wine_query", "query:SELECT * FROM default.wine_typed WHERE cultivar <> 'cultivar_2'")
    assert m["label_names"] == ["cultivar_0", "cultivar_1"] and m["output_count"] == 161 - 44


@pytest.mark.parametrize("source, message", [
    ("/nowhere/at/all", r"source file:///nowhere/at/all does not exist"),
    ("EMPTY", r"is empty: no files with data"),
    ("table:default.no_such_table", r"unknown table default.no_such_table"),
    ("query:SELECT * FROM no_such_view", r"query failed: .*no_such_view"),
    ("query:SELECT * FROM default.wine_typed WHERE 1 = 0", r"has no records"),
])
def test_bad_sources_are_one_line_errors_naming_them(spark, wine, tmp_path, source, message):
    cfg, _, _ = wine
    if source == "EMPTY":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "_SUCCESS").write_text("")
        source = str(tmp_path / "empty")
    with pytest.raises(sources.SourceError, match=message) as e:
        _run(spark, cfg, "wine_bad", source)
    assert "\n" not in str(e.value)


def test_an_image_source_that_is_missing_or_empty(spark, tmp_path):
    (tmp_path / "empty").mkdir()
    for src in (tmp_path / "missing", tmp_path / "empty"):
        cfg = load_config("conf/digits.yaml", [f"lake.root={tmp_path}", f"dataset.source={src}"])
        with pytest.raises(sources.SourceError, match=str(src)):
            preprocess.run(spark, cfg)


@pytest.fixture(scope="module")
def wine_model(wine):
    from pipeline import train
    cfg, _, _ = wine
    train.run_local(load_config("conf/wine.yaml", [f"lake.root={cfg.lake.root}", "train.epochs=1"]))
    return cfg


def test_score_passthrough_and_no_input_for_an_empty_query(spark, wine_model):
    cfg = wine_model
    m = score.run(spark, cfg, DATE).manifest  # conf/wine.yaml: score.passthrough [lot], through Spark's reader
    t = pq.read_table(lake.local_path(m["uri"])).to_pandas()
    new = pd.read_csv(lake.local_path(cfg.resolve(cfg.dataset.score_source)) + f"/dt={DATE}/wines.csv", dtype=str)
    assert m["input_count"] == m["output_count"] == len(new) == 17
    assert sorted(t["lot"]) == sorted(new["lot"]) and list(t.columns[:2]) == ["id", "lot"]
    empty = load_config("conf/wine.yaml", [f"lake.root={cfg.lake.root}", "dataset.score_source=query:SELECT * "
                                           "FROM default.wine_typed WHERE cultivar = '{date}'"])
    with pytest.raises(cli.NoInput, match="nothing to score for 2026-03-02: .* has no records"):
        score.run(spark, empty, "2026-03-02")


def test_score_reads_orc_and_csv_with_options(spark, wine_model, tmp_path):
    cfg = wine_model
    new = pd.read_csv(lake.local_path(cfg.resolve(cfg.dataset.score_source)) + f"/dt={DATE}/wines.csv", dtype=str)
    typed = spark.createDataFrame(new).selectExpr(*[f"cast(`{c}` as double) as `{c}`" if c in
                                                    cfg.dataset.tabular.numeric else f"`{c}`" for c in new.columns])
    typed.write.orc(str(tmp_path / "orc" / f"dt={DATE}"))
    (tmp_path / "semi" / f"dt={DATE}").mkdir(parents=True)
    new.to_csv(tmp_path / "semi" / f"dt={DATE}" / "w.csv", sep=";", index=False)
    for src, sets in [("orc", ["dataset.tabular.format=orc"]), ("semi", ["dataset.tabular.options={sep: ';'}"])]:
        other = load_config("conf/wine.yaml", [f"lake.root={cfg.lake.root}", f"dataset.score_source={tmp_path / src}",
                                               *sets])
        m = score.run(spark, other, DATE).manifest
        t = pq.read_table(lake.local_path(m["uri"])).to_pandas()
        assert m["output_count"] == 17 and sorted(t["lot"]) == sorted(new["lot"]), src


def test_regression_labels(spark, tmp_path):
    cfg = load_config("conf/diabetes.yaml", [f"lake.root={tmp_path}"])
    sample_data.write_diabetes(cfg, DATE, bad_records=True)
    m = preprocess.run(spark, cfg).manifest
    assert m["quarantined_by_reason"] == {"wrong_type": 1, "non_finite": 1, "missing_label": 1}
    assert m["input_count"] == 398 + 3 and m["label_names"] == [] and m["schema"]["label"] == "float32"
    t = pq.read_table(lake.local_path(m["splits"]["train"]["uri"])).to_pandas()
    assert t["label"].dtype == np.float32 and len(t) == m["splits"]["train"]["count"]
    from sklearn.datasets import load_diabetes
    target = dict(enumerate(load_diabetes().target))
    truth = np.array([target[int(i.split("-")[1])] for i in t["id"]])
    np.testing.assert_allclose(t["label"], truth, rtol=1e-6)  # unscaled
    assert m["label_stats"]["mean"] == pytest.approx(truth.mean(), rel=1e-9)
    assert m["label_stats"]["std"] == pytest.approx(truth.std(), rel=1e-9)


def test_predictions_table_replaces_only_the_dates_partition(spark, tmp_path):
    def publish(date, keys):
        part = tmp_path / date
        part.mkdir(exist_ok=True)
        pd.DataFrame({"id": keys, "prediction": ["a"] * len(keys)}).to_parquet(part / "part-0.parquet")
        score.write_table(spark, f"file://{part}", "default.preds", date)
    publish("2026-01-01", ["x", "y"])
    publish("2026-01-02", ["z"])
    publish("2026-01-01", ["w"])  # a re-run for the first date
    got = {(r["dt"], r["id"]) for r in spark.table("default.preds").collect()}
    assert got == {("2026-01-01", "w"), ("2026-01-02", "z")}


def test_absolute_paths_stay_absolute(tmp_path):
    cfg = load_config("conf/wine.yaml", [f"lake.root={tmp_path}", "dataset.source=/data/raw"])
    assert cfg.resolve(cfg.dataset.source) == "file:///data/raw"
    assert cfg.resolve("raw/x") == f"file://{tmp_path}/raw/x" and cfg.resolve("table:db.t") == "table:db.t"
    assert sources.for_date("query:SELECT 1 WHERE '{date}' > ''", DATE) == "query:SELECT 1 WHERE '{date}' > ''"  # bound when read
    assert sources.for_date("file:///in", DATE) == f"file:///in/dt={DATE}"


def test_images_from_a_table_with_a_binary_column(spark, tmp_path):
    """Preprocess and score read encoded images from a binary column, with the quarantine
    reasons of image files."""
    from sklearn.datasets import load_digits

    from pipeline import train
    digits = load_digits()
    images = np.rint(digits.images[:200] * (255.0 / 16.0)).astype(np.uint8)
    rows = [(sample_data._png(a), int(d), f"b{i // 50}") for i, (a, d) in enumerate(zip(images, digits.target))]
    bad = [(b"", 1, "x"), (b"name,value\n", 2, "x"), (sample_data._png(images[0]), None, "x")]
    spark.createDataFrame(rows + bad, "png binary, digit int, batch string") \
        .write.mode("overwrite").saveAsTable("default.digit_images")
    sets = [f"lake.root={tmp_path}", "dataset.source=table:default.digit_images", "dataset.image.content_column=png",
            "dataset.image.label_column=digit", "train.epochs=1"]
    cfg = load_config("conf/digits.yaml", sets)
    m = preprocess.run(spark, cfg).manifest
    assert m["quarantined_by_reason"] == {"empty_file": 1, "not_an_image": 1, "missing_label": 1}
    assert m["input_count"] == 203 and m["output_count"] == 200 and m["label_names"] == [str(i) for i in range(10)]
    files = [f for f in lake.listdir(m["splits"]["train"]["uri"]) if f.endswith(".parquet")]
    assert len(files) == cfg.preprocess.files_per_split, files  # spread over the tasks, one table file or not
    train.run_local(cfg)
    scoring = load_config("conf/digits.yaml", [*sets, "dataset.score_source=query:SELECT png FROM "
                                               "default.digit_images WHERE batch IN ('b0', 'x')"])
    s = score.run(spark, scoring, DATE).manifest
    assert s["input_count"] == 53 and s["quarantined_by_reason"] == {"empty_file": 1, "not_an_image": 1}
    t = pq.read_table(lake.local_path(s["uri"])).to_pandas()
    assert len(t) == 51 and t["path"].str.len().eq(16).all()
