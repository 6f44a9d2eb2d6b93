"""pipeline.ingest.tabular and pipeline.core.splits on real files, without Spark (the job tests run them in Spark)."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest import tabular
from pipeline.core.config import TabularConf

TAB = TabularConf(format="csv", id_column="id", label_column="y", numeric=["a", "b"], categorical=["c"],
                  max_categories=2)
LINES = [
    "id,y,a,b,c",
    "r1,p,1.0,2,red",
    "r2,q, 3.5 ,,blue",          # whitespace around a number; b missing (imputed)
    "r3,p,twelve,1,red",         # wrong_type
    "r4,q,NaN,1,red",            # non_finite
    "r5,p,1,-Infinity,green",    # non_finite
    "r6,,1,1,red",               # missing_label
    ",p,1,1,red",                # missing_id
    "r8,p,1,1,red,extra",        # malformed: a field too many
    "r9,p,1",                    # malformed: too few
    "r10,q,NULL,4,\"red\"",      # "NULL" is text, not null: wrong_type
    "r11,p,5,6,",                # c missing: the unknown slot
]
# validate's order: the parsed records in input order, then the malformed ones.
REASONS = [None, None, "wrong_type", "non_finite", "non_finite", "missing_label", "missing_id", "wrong_type", None,
           "malformed_record", "malformed_record"]


def _csv(tmp_path, lines=LINES, name="t.csv"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return f"file://{p}"


def _records(pieces, tab=TAB):
    return [tabular.validate(*tabular.read_piece(p, tab), tab) for p in pieces]


def _by_id(recs):
    out = {}
    for r in recs:
        for i in range(len(r)):
            key = r.ids[i] if r.ids[i] is not None else r.source[i]
            out[key] = (r.reason[i], r.detail[i])
    return out


def test_every_reason_and_the_good_values(tmp_path):
    (rec,) = _records([(_csv(tmp_path), 0, -1)])
    assert list(rec.reason) == REASONS
    got = _by_id([rec])
    assert got["r3"][1] == "a=twelve" and got["r6"][1] == "y"
    good = [i for i in range(len(rec)) if rec.reason[i] is None]
    assert [rec.ids[i] for i in good] == ["r1", "r2", "r11"]
    assert rec.numeric["a"][good].tolist() == [1.0, 3.5, 5.0] and np.isnan(rec.numeric["b"][good[1]])
    bad_sources = [s for s in rec.source if s is not None]
    assert "r8,p,1,1,red,extra" in bad_sources and any(json.loads(s).get("id") == "r3" for s in bad_sources
                                                         if s.startswith("{"))


def test_byte_ranges_read_every_record_exactly_once(tmp_path):
    uri = _csv(tmp_path)
    size = len("\n".join(LINES)) + 1
    whole = _by_id(_records([(uri, 0, -1)]))
    for step in (1, 3, 7, 16, 40, size):
        pieces = [(uri, s, min(step, size - s)) for s in range(0, size, step)]
        assert _by_id(_records(pieces)) == whole, step


def test_plan_balances_bytes_and_checks_the_header(tmp_path):
    body = [f"r{i},p,{i},1,red" for i in range(50_000)]
    for k in range(3):
        _csv(tmp_path, [LINES[0], *body[k::3]], f"part{k}.csv")
    plan = tabular.plan(f"file://{tmp_path}", TAB, 4, 1 << 20)
    loads = [sum(p[2] for p in task) for task in plan]
    assert max(loads) - min(loads) < 0.35 * max(loads), loads
    n = sum(len(r) for task in plan for r in _records(task))
    assert n == 50_000
    (tmp_path / "drift.csv").write_text("id,y,a,b,c,new\n")
    with pytest.raises(tabular.SchemaDriftError, match=r"not declared \['new'\]"):
        _records([(f"file://{tmp_path}/drift.csv", 0, -1)])


def test_json_lines_and_parquet_read_like_csv(tmp_path):
    rows = [{"id": "r1", "y": "p", "a": 1.0, "b": 2, "c": "red"}, {"id": "r2", "y": "q", "a": "x", "b": None, "c": "blue"}]
    (tmp_path / "t.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    pq.write_table(pa.table({"id": ["r1", "r2"], "y": ["p", "q"], "a": [1.0, float("inf")], "b": [2.0, None],
                             "c": [1.0, None]}), tmp_path / "t.parquet")  # a float category, as pandas writes it
    (j,) = _records([(f"file://{tmp_path}/t.json", 0, -1)], TabularConf(**{**TAB.__dict__, "format": "json"}))
    assert list(j.reason) == [None, "wrong_type", "malformed_record"] and j.source[2] == "{not json"
    (p,) = _records([(f"file://{tmp_path}/t.parquet", 0, -1)], TabularConf(**{**TAB.__dict__, "format": "parquet"}))
    assert list(p.reason) == [None, "non_finite"] and p.numeric["b"][0] == 2.0
    assert p.categorical["c"][0] == "1.0"  # as JSON text and Spark give a float, not Arrow's "1"


def test_fit_merged_from_parts_equals_a_fit_on_everything(tmp_path):
    rng = np.random.default_rng(0)
    body = [f"r{i},p,{rng.normal(100, 5):.6f},{rng.integers(0, 9)},{rng.choice(['x', 'y', 'z'], p=[.5, .3, .2])}"
            for i in range(3000)]
    uri = _csv(tmp_path, [LINES[0], *body])
    (whole,) = _records([(uri, 0, -1)])
    size = len("\n".join([LINES[0], *body])) + 1
    parts = _records([(uri, s, 10_000) for s in range(0, size, 10_000)])
    merged = tabular.merge_fits([tabular.partial_fit(r, TAB) for r in parts], TAB)
    assert merged["categorical"]["c"] == ["x", "y"]  # the top max_categories=2
    for c in TAB.numeric:
        assert merged["numeric"][c]["mean"] == pytest.approx(whole.numeric[c].mean(), rel=1e-12)
        assert merged["numeric"][c]["std"] == pytest.approx(whole.numeric[c].std(), rel=1e-9)
    x = tabular.encode(whole, TAB, merged)
    assert x.shape == (3000, merged["num_features"]) == (3000, 2 + 3) and x.dtype == np.float32
    assert np.allclose(x[:, 0].mean(), 0, atol=1e-5) and np.allclose(x[:, 2:].sum(1), 1)


def test_a_value_parses_the_same_whatever_else_is_in_its_column(tmp_path):
    rng = np.random.default_rng(2)
    values = [repr(float(v)) for v in rng.normal(0, 1e3, 2000)] + ["1e400", "-nan", "+inf", "0.1000000000000000055511151231257827"]
    clean = tabular.to_double(pa.chunked_array([pa.array(values)]))
    mixed = tabular.to_double(pa.chunked_array([pa.array(values + ["twelve", "1d", "0x10"])]))
    np.testing.assert_array_equal(mixed[:len(values)], clean)
    assert np.isnan(mixed[len(values):]).all()


def test_odd_input_is_read_not_fatal(tmp_path):
    """Invalid UTF-8, gzip, sparse JSON (null fields left out), a JSON BOM and U+2028 in a value."""
    (tmp_path / "latin1.csv").write_bytes(b"id,y,a,b,c\nr1,p,1,2,caf\xe9\n")
    (rec,) = _records([(f"file://{tmp_path}/latin1.csv", 0, -1)])
    assert rec.reason[0] is None and rec.categorical["c"][0] == "caf\ufffd"

    import gzip
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "t.csv.gz").write_bytes(gzip.compress("\n".join(LINES[:3]).encode() + b"\n"))
    plan = tabular.plan(f"file://{tmp_path}/gz", TAB, 4, 1 << 20)
    assert [p for t in plan for p in t] == [(f"file://{tmp_path}/gz/t.csv.gz", 0, -1)]
    assert [list(r.ids) for t in plan for r in _records(t)] == [["r1", "r2"]]

    jtab = TabularConf(**{**TAB.__dict__, "format": "json"})
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "t.json").write_bytes(
        b'\xef\xbb\xbf{"id": "r1", "y": "p", "a": 1}\n{"id": "r2", "y": "q", "a": 2, "c": "u\\u2028v", "b": 3}\n')
    (plan,) = tabular.plan(f"file://{tmp_path}/j", jtab, 1, 1 << 20)  # "b" and "c" absent from the first record
    (rec,) = _records(plan, jtab)
    assert list(rec.reason) == [None, None] and rec.categorical["c"][1] == "u\u2028v"
