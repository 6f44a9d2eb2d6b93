from pyspark.sql import Row

from pipeline import preprocess
from pipeline.config import SplitConf


def _ids(spark, n, partitions):
    return spark.createDataFrame([Row(id=f"{i % 10}/{i:05d}.png") for i in range(n)]).repartition(partitions)


def test_split_is_deterministic_across_partitionings_and_roughly_proportional(spark):
    conf = SplitConf(train=0.8, val=0.1, test=0.1, seed=17)
    a = {r.id: r.split for r in preprocess.with_split(_ids(spark, 2000, 1), conf).collect()}
    b = {r.id: r.split for r in preprocess.with_split(_ids(spark, 2000, 7), conf).collect()}
    assert a == b
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert 1500 < counts["train"] < 1700 and 120 < counts["val"] < 280 and 120 < counts["test"] < 280
    c = {r.id: r.split for r in preprocess.with_split(_ids(spark, 2000, 3), SplitConf(seed=18)).collect()}
    assert c != a  # the seed matters


def test_relative_id(spark):
    df = spark.createDataFrame([Row(path="file:/lake/raw/digits/labelled/7/0001.png")])
    out = preprocess.with_relative_id(df, "file:///lake/raw/digits/labelled").first()
    assert out.id == "7/0001.png"


def test_label_file_join_leaves_unlabelled_rows_null(spark):
    df = spark.createDataFrame([Row(id="a.png"), Row(id="b.png")])
    labels = spark.createDataFrame([Row(path="a.png", label="cat")])
    out = {r.id: r.label_name for r in preprocess.with_file_label(df, labels).collect()}
    assert out == {"a.png": "cat", "b.png": None}


def test_label_index_follows_numeric_order(spark):
    names = preprocess.sort_labels(["10", "2", "1"])
    assert names == ["1", "2", "10"]
    df = spark.createDataFrame([Row(label_name="10"), Row(label_name="1")])
    assert [r.label for r in preprocess.with_label_index(df, names).collect()] == [2, 0]
    assert preprocess.sort_labels(["dog", "cat"]) == ["cat", "dog"]
