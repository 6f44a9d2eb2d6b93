"""Rows that share an id (dataset.tabular.duplicates) and over-long values (value_too_long) in
preprocess, on scikit-learn's wine table with an id column added and duplicates planted in two
files; the decision itself on tiny frames. Scoring: tests/test_score.py."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import sets, spark_submit
from pipeline import preprocess
from pipeline.core import lake, splits
from pipeline.core.config import load_config
from pipeline.ingest import tabular, tabular_tasks
from pipeline.spark import cli

LONG = "x" * 1_000_000  # a 1 MB category value


@pytest.fixture(scope="module")
def wine():
    from sklearn.datasets import load_wine

    data = load_wine(as_frame=True)
    df = data.data.rename(columns=lambda c: c.replace("/", "_"))
    df.insert(0, "cultivar", [f"cultivar_{t}" for t in data.target])
    df.insert(0, "id", [f"w{i:03d}" for i in range(len(df))])
    df["hue_band"] = np.where(df["hue"] < df["hue"].median(), "dark", "bright")
    return df


def _config(root, *overrides):
    return load_config("conf/wine.yaml", [f"lake.root={root}", "dataset.tabular.id_column=id",
                                          "dataset.tabular.ignore=[]", "score.passthrough=[]", "tracking.enabled=false",
                                          "preprocess.max_bad_fraction=0.2", *overrides])


def _train_ids(wine, cfg, n):
    """n ids of the train split, so a row that must not be fitted would move the fitted mean."""
    ids = wine["id"].tolist()
    return [i for i, s in zip(ids, splits.assign(ids, cfg.preprocess.split)) if s == 0][:n]


@pytest.fixture(scope="module")
def planted(wine, tmp_path_factory):
    """(lake root, conflicting ids, identical ids): a.csv holds w000..w099, a copy of one row and a
    conflicting version of another after them, and a row with a 1 MB category; b.csv starts with a
    conflicting version of a row of a.csv, then w100..w177 and a copy of another row of a.csv."""
    root = tmp_path_factory.mktemp("dup-lake")
    cfg = _config(root)
    c_a, c_b, same_a, same_b = _train_ids(wine, cfg, 4)
    assert max(int(i[1:]) for i in (c_a, c_b, same_a, same_b)) < 100
    by_id = wine.set_index("id", drop=False)

    def changed(i):
        row = by_id.loc[[i]].copy()
        row["alcohol"] += 1.0
        return row

    long_row = by_id.loc[["w060"]].assign(id="long-category", hue_band=LONG)
    a = pd.concat([wine.iloc[:100], by_id.loc[[same_a]], changed(c_a), long_row])
    b = pd.concat([changed(c_b), wine.iloc[100:], by_id.loc[[same_b]]])
    src = cfg.resolve(cfg.dataset.source)
    for name, part in (("a.csv", a), ("b.csv", b)):
        lake.write_bytes(f"{src}/{name}", part.to_csv(index=False).encode())
    return root, (c_a, c_b), (same_a, same_b)


def _curated(m):
    return pd.concat([pq.read_table(lake.local_path(m["splits"][s]["uri"])).to_pandas() for s in ("train", "val", "test")])


def _quarantine(m):
    return pq.read_table(lake.local_path(m["quarantine_uri"])).to_pandas()


def _alcohol(m, curated):
    """The alcohol value of each curated row, undoing the standardisation."""
    p = m["tabular"]["numeric"]["alcohol"]
    return dict(zip(curated["id"], [f[0] * p["std"] + p["mean"] for f in curated["features"]]))


def _check_fit(m, wine, curated):
    """The fitted alcohol mean is the mean over the curated train rows as kept, nothing else."""
    train = curated[curated["id"].isin(pq.read_table(lake.local_path(m["splits"]["train"]["uri"]))["id"].to_pylist())]
    values = wine.set_index("id")["alcohol"].to_dict()
    assert m["tabular"]["numeric"]["alcohol"]["mean"] == pytest.approx(np.mean([values[i] for i in train["id"]]))


def test_quarantine_mode(spark, wine, planted):
    root, conflicting, identical = planted
    m = preprocess.run(spark, _config(root)).manifest
    assert m["input_count"] == 178 + 5 == m["output_count"] + m["quarantined_count"]
    assert m["quarantined_by_reason"] == {"duplicate_id": 4, "duplicate_row": 2, "value_too_long": 1}
    curated = _curated(m)
    assert curated["id"].is_unique and len(curated) == m["output_count"] == 176
    assert set(curated["id"]) == set(wine["id"]) - set(conflicting)  # identical rows: one copy kept
    q = _quarantine(m)
    dup = q[q["reason"].str.startswith("duplicate")]
    assert sorted(dup["detail"]) == sorted([f"id={i}" for i in conflicting for _ in range(2)] +
                                           [f"id={i}" for i in identical])
    assert set(dup["stage"]) == {"preprocess.deduplicate"}
    assert {json.loads(s)["id"] for s in dup["source"]} == {*conflicting, *identical}
    long = q[q["reason"] == "value_too_long"]
    assert long["detail"].tolist() == ["hue_band: 1000000 bytes, over 1024"]
    assert sorted(m["tabular"]["categorical"]["hue_band"]) == ["bright", "dark"]
    assert LONG not in json.dumps(m)
    _check_fit(m, wine, curated)


@pytest.mark.parametrize("reader", ["auto", "spark"])
def test_keep_first_keeps_the_first_row_by_file_and_position(spark, wine, planted, reader):
    root, (c_a, c_b), identical = planted
    m = preprocess.run(spark, _config(root, "dataset.tabular.duplicates=keep_first", f"dataset.tabular.reader={reader}")).manifest
    assert m["input_count"] == 183 == m["output_count"] + m["quarantined_count"]
    assert m["quarantined_by_reason"] == {"duplicate_id": 2, "duplicate_row": 2, "value_too_long": 1}
    curated = _curated(m)
    assert curated["id"].is_unique and set(curated["id"]) == set(wine["id"])
    # c_a's first row is earlier in a.csv; c_b's first row is b.csv's first, but a.csv comes first.
    original = wine.set_index("id")["alcohol"]
    got = _alcohol(m, curated)
    assert got[c_a] == pytest.approx(original[c_a], abs=1e-4) and got[c_b] == pytest.approx(original[c_b], abs=1e-4)
    q = _quarantine(m)
    assert sorted(q.loc[q["reason"] == "duplicate_id", "detail"]) == sorted([f"id={c_a}", f"id={c_b}"])
    assert all(json.loads(s)["alcohol"] == pytest.approx(original[json.loads(s)["id"]] + 1)
               for s in q.loc[q["reason"] == "duplicate_id", "source"])
    _check_fit(m, wine, curated)


def test_error_mode_exits_1_naming_the_first_duplicated_id(planted):
    """Through spark-submit, as a user runs it: exit 1, one line, no traceback, nothing published."""
    root, conflicting, identical = planted
    first = min(*conflicting, *identical)  # each first in a.csv, at its row: the lowest comes first
    latest = _config(root).uri("curated", "wine", "_latest")  # other tests of the module may have set it
    before = lake.read_bytes(latest) if lake.exists(latest) else None
    p = spark_submit("jobs/preprocess.py", "--config", "conf/wine.yaml",
                     *sets(f"lake.root={root}", "dataset.tabular.id_column=id", "dataset.tabular.ignore=[]",
                           "score.passthrough=[]", "tracking.enabled=false", "dataset.tabular.duplicates=error"),
                     check=False, timeout=300)
    out = p.stdout + p.stderr
    failed = [ln for ln in out.splitlines() if "FAILED" in ln]
    assert p.returncode == cli.EXIT_FAILED and "Traceback" not in out, out[-3000:]
    assert len(failed) == 1 and failed[0].startswith(f"preprocess: FAILED: DuplicateId: id='{first}' is on 2 rows "
                                                     f"(the first in file:"), failed
    assert "/a.csv) and dataset.tabular.duplicates is error" in failed[0]
    assert (lake.read_bytes(latest) if lake.exists(latest) else None) == before  # nothing published


def test_an_unknown_mode_is_a_config_error(capsys):
    rc = cli.parse("preprocess", cli.parser("x"), ["--config", "conf/wine.yaml", "--set",
                                                   "dataset.tabular.duplicates=drop"])
    err = capsys.readouterr().err.strip()
    assert rc == cli.EXIT_BAD_CONFIG and len(err.splitlines()) == 1
    assert "dataset.tabular.duplicates" in err and "keep_first" in err


KEYS = [  # key, hash, file, position
    ("a", 1, "f1", 5), ("a", 1, "f1", 2),             # identical
    ("b", 1, "f2", 0), ("b", 2, "f1", 9),             # conflicting: f1 comes first
    ("c", 3, "f1", 0), ("c", 3, "f1", 1), ("c", 4, "f1", 2),  # two identical and one that differs
    ("d", 5, "f1", 3),
]


@pytest.mark.parametrize("mode, has_id, expected", [
    ("quarantine", True, {("a", 5): "duplicate_row", ("b", 0): "duplicate_id", ("b", 9): "duplicate_id",
                          ("c", 0): "duplicate_id", ("c", 1): "duplicate_id", ("c", 2): "duplicate_id"}),
    ("keep_first", True, {("a", 5): "duplicate_row", ("b", 0): "duplicate_id", ("c", 1): "duplicate_row",
                          ("c", 2): "duplicate_id"}),
    # Without an id column keys are hashes of the values: identical rows, the first kept, any mode.
    ("quarantine", False, {("a", 5): "duplicate_row", ("b", 0): "duplicate_row", ("c", 1): "duplicate_row",
                           ("c", 2): "duplicate_row"}),
    ("error", False, {("a", 5): "duplicate_row", ("b", 0): "duplicate_row", ("c", 1): "duplicate_row",
                      ("c", 2): "duplicate_row"}),
])
def test_which_rows_are_duplicates(spark, mode, has_id, expected):
    df = spark.createDataFrame(KEYS, f"key string, {tabular_tasks.HASH} long, {tabular_tasks.FILE} string, "
                                     f"{tabular_tasks.POS} long")
    out = tabular_tasks.mark_duplicates(df, "key", mode, has_id).collect()
    got = {(r["key"], r[tabular_tasks.POS]): r[tabular_tasks.DUPLICATE] for r in out}
    assert {k: v for k, v in got.items() if v} == expected


def test_value_too_long_counts_utf8_bytes(tmp_path):
    tab = load_config("conf/wine.yaml", ["dataset.tabular.id_column=id"]).dataset.tabular
    cols = [c for c in tab.columns() if c not in tab.ignore]
    rows = [{c: "1.0" for c in cols} | {"id": i, "cultivar": "c1", "hue_band": band}
            for i, band in [("ok", "é" * 512), ("long", "é" * 513), ("x" * 20, "dark")]]
    t = pa.table({c: [r[c] for r in rows] for c in cols})
    rec = tabular.validate(t, [], tab, max_bytes=1024)
    assert list(rec.reason) == [None, "value_too_long", None]
    assert rec.detail[1] == "hue_band: 1026 bytes, over 1024"
    rec = tabular.validate(t, [], tab, max_bytes=10)  # the id is checked too, and first
    assert list(rec.reason) == ["value_too_long", "value_too_long", "value_too_long"]
    assert rec.detail[2] == "id: 20 bytes, over 10"
