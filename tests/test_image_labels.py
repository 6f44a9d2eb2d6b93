"""Folder labels: the class of an image is its parent folder under the source; an image directly
in the source folder has none and is quarantined as missing_label, never made a class of its own."""
import numpy as np
import pyarrow.parquet as pq

from conftest import png_bytes
from pipeline import preprocess
from pipeline.core import lake
from pipeline.core.config import load_config
from pipeline.ingest import image_tasks
from untouched import Fence

CLASSES = {"cat": 3, "dog": 3}


def _write_source(src) -> None:
    rng = np.random.default_rng(0)
    for name, n in CLASSES.items():
        (src / name).mkdir(parents=True)
        for i in range(n):
            (src / name / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 255, (8, 8), dtype=np.uint8)))
    (src / "stray.png").write_bytes(png_bytes(rng.integers(0, 255, (8, 8), dtype=np.uint8)))


def test_a_root_image_gets_no_label_in_the_plan(tmp_path):
    src = tmp_path / "labelled"
    _write_source(src)
    cfg = load_config("conf/digits.yaml", [f"lake.root={tmp_path}", "dataset.source=labelled"])
    plans, classes = image_tasks.plan(cfg.resolve(cfg.dataset.source), None, cfg.preprocess.split, 2)
    labels = {r["id"]: r["label_name"] for t in plans for r in t.to_pylist()}
    assert classes == ["cat", "dog"]
    assert labels["stray.png"] is None and labels["cat/0.png"] == "cat" and labels["dog/2.png"] == "dog"


def test_a_root_image_is_quarantined_as_missing_label_and_the_counts_reconcile(spark, tmp_path):
    root = tmp_path / "lake"
    _write_source(root / "labelled")
    cfg = load_config("conf/digits.yaml", [f"lake.root={root}", "dataset.name=pets", "dataset.source=labelled",
                                           "preprocess.files_per_split=1", "preprocess.max_bad_fraction=0.5",
                                           "tracking.enabled=false"])
    fence = Fence(root)
    m = preprocess.run(spark, cfg).manifest
    fence.check(may_write=("curated/pets", "quarantine/pets"))  # the source as it was, nothing outside the lake

    q = pq.read_table(lake.local_path(m["quarantine_uri"])).to_pandas()
    assert len(q) == 1 and q["source"].iloc[0].endswith("/labelled/stray.png")
    assert q["reason"].iloc[0] == image_tasks.MISSING_LABEL == "missing_label"
    assert m["label_names"] == ["cat", "dog"]  # the source folder's own name is not a class
    assert m["quarantined_by_reason"] == {"missing_label": 1}
    assert m["input_count"] == 7 == m["output_count"] + m["quarantined_count"] and m["output_count"] == 6
    class_counts: dict[str, int] = {}
    for s in m["splits"].values():
        for name, n in s["class_counts"].items():
            class_counts[name] = class_counts.get(name, 0) + n
    assert class_counts == CLASSES
    written = sum(pq.read_table(lake.local_path(s["uri"])).num_rows for s in m["splits"].values() if s["count"])
    assert written == m["output_count"]
