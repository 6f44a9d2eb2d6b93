"""The image plan (ids, labels, splits, dealing to tasks) and the split function."""
import numpy as np
from pyspark.sql import Row
from pyspark.sql import functions as F

from pipeline.ingest import image_tasks
from pipeline.kinds import images as images_kind
from pipeline.core import splits
from pipeline.core.config import SplitConf


def _files(tmp_path, n=300):
    for i in range(n):
        d = tmp_path / "src" / str(i % 3)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.png").write_bytes(b"x")
    return f"file://{tmp_path}/src"


def _rows(plans):
    return {r["id"]: r for t in plans for r in t.to_pylist()}


def test_split_is_deterministic_and_roughly_proportional():
    ids = [f"{i % 10}/{i:05d}.png" for i in range(2000)]
    conf = SplitConf(train=0.8, val=0.1, test=0.1, seed=17)
    a = splits.assign(ids, conf)
    assert (a == splits.assign(list(reversed(ids)), conf)[::-1]).all()
    counts = np.bincount(a, minlength=3)
    assert 1500 < counts[0] < 1700 and 120 < counts[1] < 280 and 120 < counts[2] < 280
    assert (splits.assign(ids, SplitConf(seed=18)) != a).any()  # the seed matters


def test_numpy_split_is_sparks_xxhash64(spark):
    """The documented formula, pmod(xxhash64(seed, id), 1e6) / 1e6, evaluated by Spark SQL."""
    rng = np.random.default_rng(1)
    ids = ["", "a", "7/0001.png", "é/ü.png", *(f"{'x' * int(k)}{i}" for i, k in enumerate(rng.integers(0, 90, 400)))]
    conf = SplitConf(train=0.6, val=0.2, test=0.2, seed=23)
    u = F.pmod(F.xxhash64(F.lit(conf.seed), F.col("id")), F.lit(1_000_000)) / 1_000_000.0
    split = F.when(u < conf.train, "train").when(u < conf.train + conf.val, "val").otherwise("test")
    want = {r.id: r.split for r in spark.createDataFrame([Row(id=i) for i in ids]).select("id", split.alias("split")).collect()}
    assert dict(zip(ids, np.asarray(splits.NAMES)[splits.assign(ids, conf)])) == want
    df = spark.createDataFrame([Row(id=i) for i in ids])
    for seed in (0, 23, -7, 2**31 - 1):  # the hashes themselves, negative seeds included
        spark_hash = [r.h for r in df.select(F.xxhash64(F.lit(seed), F.col("id")).alias("h")).collect()]
        assert splits.xxhash64(seed, ids).tolist() == spark_hash


def test_plan_gives_relative_ids_folder_labels_and_the_same_splits_for_any_task_count(tmp_path):
    src = _files(tmp_path)
    plans, classes = image_tasks.plan(src, None, SplitConf(), 4)
    assert classes == ["0", "1", "2"] and len(plans) == 4 and {t.num_rows for t in plans} == {75}
    rows = _rows(plans)
    assert rows["1/00004.png"]["label_name"] == "1" and rows["1/00004.png"]["path"].startswith("file:/")
    assert all(len({r["label_name"] for r in t.to_pylist()}) == 3 for t in plans)  # every task gets every class
    other = _rows(image_tasks.plan(src, None, SplitConf(), 7)[0])
    assert {i: r["split"] for i, r in other.items()} == {i: rows[i]["split"] for i in other}


def test_labels_file_leaves_unlabelled_files_without_a_label(tmp_path):
    src = _files(tmp_path, 6)
    plans, classes = image_tasks.plan(src, {"0/00000.png": "cat", "1/00001.png": "dog"}, SplitConf(), 2)
    rows = _rows(plans)
    assert classes == ["cat", "dog"] and rows["0/00000.png"]["label_name"] == "cat"
    assert rows["2/00002.png"]["label_name"] is None


def test_label_order_is_numeric_where_the_names_are_numbers():
    assert images_kind.sort_labels(["10", "2", "1"]) == ["1", "2", "10"]
    assert images_kind.sort_labels(["dog", "cat"]) == ["cat", "dog"]
