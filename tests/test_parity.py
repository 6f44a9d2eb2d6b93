"""The two tabular readers give the same curated output: the tasks' own pyarrow reader (the fast
path for plain files) and Spark's reader + mapInArrow, on the same awkward files. Spark's reader is
the reference."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import lake
from pipeline import preprocess
from pipeline.core.config import load_config

COLUMNS = ["id", "y", "a", "b", "c"]
CSV = (b"\xef\xbb\xbfid,y,a,b,c\r\n"  # a byte-order mark and CRLF line ends
       b'r1,p,1e3,2,""\r\n'  # a quoted empty category: null, as Spark reads it by default
       b"r2,q, 2 ,,blue\r\n"  # spaces around a number; a missing number (imputed)
       b"r3,p,NaN,1,red\r\n"  # non_finite
       b"r4,q,inf,1,red\r\n"  # non_finite
       b"r5,p,-1.5E-3,1,caf\xe9\r\n"  # invalid UTF-8 (Latin-1), replaced
       b'"   ",p,1,1,red\r\n'  # a whitespace-only id: missing_id
       b"r7,p,1,2\r\n"  # ragged: a field short
       b"r8,p,1,2,red,x\r\n"  # ragged: a field too many
       b"r9,true,1,1,false\r\n"  # booleans as a label and a category
       b"r10,p,true,1,red\r\n"  # a boolean where a number belongs: wrong_type
       b'r11,"",1,1,red\r\n'  # a quoted empty label: missing_label
       b'r12,q,"3,5",1,"a, b"\r\n'  # quoted separators
       b"r13,p,+.5,-0,  red  \r\n"  # a category with spaces is kept as it is
       + b"".join(f"g{i},{'pq'[i % 2]},{i * 0.37:.3f},{i % 7},{'xyz'[i % 3]}\r\n".encode() for i in range(60)))
JSON_ROWS = [{"id": "r1", "y": "p", "a": 1e3, "b": 2, "c": ""},
             {"id": "r2", "y": "q", "a": " 2 ", "b": None, "c": "blue"},
             {"id": "r3", "y": "p", "a": "NaN", "b": 1, "c": True},
             {"id": "   ", "y": "p", "a": 1, "b": 1, "c": "red"},
             {"id": "r5", "y": "p", "a": True, "b": 1, "c": "red"},
             {"id": "r6", "y": True, "a": "inf", "b": 1, "c": "red"},
             {"id": "r7", "y": "q", "c": "u\u2028v"},  # sparse: absent fields are null
             *[{"id": f"g{i}", "y": "pq"[i % 2], "a": i * 0.37, "b": i % 7, "c": "xyz"[i % 3]} for i in range(60)]]


def _parquet(path):
    n = 60
    pq.write_table(pa.table({
        "id": pa.array([None, *range(1, n)], pa.int64()),  # typed ids: text as Spark casts them
        "y": pa.array(["p", None, *["pq"[i % 2] for i in range(n - 2)]]),
        "a": pa.array([1.5, float("nan"), float("inf"), None, *[i * 0.5 for i in range(n - 4)]], pa.float64()),
        "b": pa.array([None, *range(n - 1)], pa.int32()),
        # float categories, written as Spark casts them to text (1.0E7, 1.5E-5, NaN)
        "c": pa.array([1.0, None, 2.5, 1e7, 1.5e-5, float("nan"), *[float(i % 3) for i in range(n - 6)]], pa.float64()),
    }), path)


def _wide(path, k=300):
    rng = np.random.default_rng(3)
    head = ",".join(["id", "y", *[f"x{i}" for i in range(k)], "c"])
    rows = [",".join([f"w{r}", "pq"[r % 2], *[f"{v:.4f}" for v in rng.normal(size=k)], "z" * 5000 if r == 0 else "s"])
            for r in range(40)]
    path.write_text("\n".join([head, *rows]) + "\n")
    return [f"x{i}" for i in range(k)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("adversarial")
    for sub in ("csv", "json", "parquet", "wide"):
        (d / sub).mkdir()
    (d / "csv" / "t.csv").write_bytes(CSV)
    (d / "json" / "t.json").write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in JSON_ROWS).encode()
                                        + b"\n{not json\n")
    _parquet(d / "parquet" / "t.parquet")
    wide = _wide(d / "wide" / "t.csv")
    return d, wide


def _run(spark, root, src, fmt, reader, numeric=("a", "b"), extra=("dataset.tabular.id_column=id",)):
    cfg = load_config(None, [f"lake.root={root}", "dataset.kind=tabular", f"dataset.name=p_{fmt}_{reader}",
                             f"dataset.source=file://{src}", f"dataset.tabular.format={fmt}",
                             f"dataset.tabular.reader={reader}", "dataset.tabular.label_column=y",
                             f"dataset.tabular.numeric={list(numeric)}", "dataset.tabular.categorical=[c]",
                             "preprocess.max_bad_fraction=1.0", "preprocess.files_per_split=2", *extra])
    return preprocess.run(spark, cfg).manifest


def _curated(m):
    out = {}
    for s in preprocess.SPLITS:
        t = pq.read_table(lake.local_path(m["splits"][s]["uri"])).to_pandas().sort_values("id")
        out[s] = (t["id"].tolist(), t["label"].tolist(), np.stack(t["features"].values) if len(t) else None)
    return out


def _quarantined(m):
    if not m["quarantine_uri"]:
        return []
    q = pq.read_table(lake.local_path(m["quarantine_uri"])).to_pandas()
    return sorted(zip(q["reason"], q["detail"]))


def _assert_same(fast, spark_m):
    for k in ("input_count", "output_count", "quarantined_by_reason", "label_names"):
        assert fast[k] == spark_m[k], k
    assert fast["tabular"]["categorical"] == spark_m["tabular"]["categorical"]
    assert fast["tabular"]["feature_names"] == spark_m["tabular"]["feature_names"]
    for c, p in fast["tabular"]["numeric"].items():
        assert spark_m["tabular"]["numeric"][c] == pytest.approx(p, rel=1e-12), c
    assert _quarantined(fast) == _quarantined(spark_m)
    a, b = _curated(fast), _curated(spark_m)
    for s in preprocess.SPLITS:
        assert a[s][0] == b[s][0] and a[s][1] == b[s][1], s
        if a[s][2] is not None:
            np.testing.assert_allclose(a[s][2], b[s][2], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_both_readers_give_the_same_curated_output(spark, inputs, tmp_path, fmt):
    d, _ = inputs
    fast = _run(spark, tmp_path, d / fmt, fmt, "auto")
    ref = _run(spark, tmp_path, d / fmt, fmt, "spark")
    _assert_same(fast, ref)
    assert fast["quarantined_count"] > 0 and fast["output_count"] > 40


def test_float_categories_read_as_spark_writes_them(spark, inputs, tmp_path):
    d, _ = inputs
    m = _run(spark, tmp_path, d / "parquet", "parquet", "auto")
    assert {"c=1.0E7", "c=1.5E-5", "c=1.0"} <= set(m["tabular"]["feature_names"])  # not 10000000.0, 1e-05, 1


def test_what_the_awkward_csv_records_became(spark, inputs, tmp_path):
    d, _ = inputs
    m = _run(spark, tmp_path, d / "csv", "csv", "spark")
    assert m["quarantined_by_reason"] == {"non_finite": 2, "missing_id": 1, "malformed_record": 2, "wrong_type": 2,
                                          "missing_label": 1}
    assert m["label_names"] == ["p", "q", "true"]
    assert "c=caf\ufffd" in m["tabular"]["feature_names"] and "c=  red  " in m["tabular"]["feature_names"]
    assert "c=" not in m["tabular"]["feature_names"]  # the quoted "" was read as null


def test_wide_rows_and_no_id_column(spark, inputs, tmp_path):
    d, wide = inputs
    long_ok = ("dataset.tabular.id_column=id", "preprocess.max_category_bytes=8192")  # the 5,000-byte category
    fast = _run(spark, tmp_path, d / "wide", "csv", "auto", numeric=wide, extra=long_ok)
    _assert_same(fast, _run(spark, tmp_path, d / "wide", "csv", "spark", numeric=wide, extra=long_ok))
    assert fast["tabular"]["num_features"] == 300 + 3
    # Without an id the split key is a hash of the declared values: the same on both paths.
    no_id = ["dataset.tabular.ignore=[id]"]
    _assert_same(_run(spark, tmp_path, d / "csv", "csv", "auto", extra=no_id),
                 _run(spark, tmp_path, d / "csv", "csv", "spark", extra=no_id))
