"""pipeline.samples.synthetic: layout, determinism, and that preprocess takes its output as is."""
import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pipeline.spark import cli
from pipeline.core import lake
from pipeline import preprocess
from pipeline.samples import synthetic
from pipeline.core.config import load_config
from pipeline.ingest.images import ImageSpec, decode_image

IMAGES = str(ROOT / "conf" / "synthetic_images.yaml")
TABULAR = str(ROOT / "conf" / "synthetic_tabular.yaml")
DATE = "2026-03-01"


def _cfg(path, root, *overrides):
    return load_config(path, [f"lake.root={root}", *overrides])


def _files(uri):
    """Relative path -> bytes for every visible file under a file:// URI."""
    base = Path(lake.local_path(uri))
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file() and not p.name.startswith((".", "_"))}


def _csv_rows(uri):
    header, rows = None, []
    for name, data in _files(uri).items():
        assert name.endswith(".csv"), name
        lines = list(csv.reader(io.StringIO(data.decode())))
        assert header in (None, lines[0])
        header = lines[0]
        rows += lines[1:]
    return header, rows


@pytest.fixture(scope="module")
def image_lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_images")
    cfg = _cfg(IMAGES, root, "preprocess.files_per_split=1")
    summary = synthetic.run(spark, cfg, synthetic.Options(rows=300, partitions=3))
    return cfg, summary


def test_images_layout_and_marker(image_lake):
    cfg, summary = image_lake
    files = _files(cfg.resolve(cfg.dataset.source))
    assert summary["rows"] == len(files) == 300
    classes = {name.split("/")[0] for name in files}
    assert classes == {str(k) for k in range(10)}  # 300 draws hit all 10 classes
    assert all(len(name.split("/")[1]) == len("0000000000.png") for name in files)
    arr = np.asarray(Image.open(io.BytesIO(next(iter(files.values())))))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    marker = lake.read_json(f"{cfg.resolve(cfg.dataset.source)}/{synthetic.MARKER}")
    assert marker["rows"] == 300 and marker["options"]["seed"] == 0


def test_images_are_the_same_bytes_on_any_partitioning(spark, image_lake, tmp_path):
    cfg, _ = image_lake
    again = _cfg(IMAGES, tmp_path)
    synthetic.run(spark, again, synthetic.Options(rows=300, partitions=2))
    assert _files(again.resolve(again.dataset.source)) == _files(cfg.resolve(cfg.dataset.source))
    other_seed = _cfg(IMAGES, tmp_path / "seed")
    synthetic.run(spark, other_seed, synthetic.Options(rows=20, seed=1))
    first = _files(cfg.resolve(cfg.dataset.source))
    assert not set(_files(other_seed.resolve(other_seed.dataset.source)).items()) & set(first.items())


def test_classes_differ_in_shape_and_position():
    pixels = {k: [] for k in range(10)}
    for i in range(400):
        label, arr = synthetic.render_image(i, 0, synthetic.LABELLED, 10, 32, 32, 1, noise=0.0)
        pixels[label].append(arr[:, :, 0] > 150)  # the bright shape
    means = {k: np.mean(v, axis=0) for k, v in pixels.items() if v}
    assert len(means) == 10
    # Class 0 (square, upper left) and class 5 (square, lower right) do not overlap on average.
    assert (means[0][:16, :16].mean() > 0.1) and (means[5][:16, :16].mean() < 0.01)
    assert np.abs(means[1] - means[2]).sum() > 10  # disk vs ring at the same anchor


def test_preprocess_accepts_synthetic_images(spark, image_lake):
    cfg, _ = image_lake
    m = preprocess.run(spark, cfg).manifest
    assert m["input_count"] == 300 == m["output_count"]
    assert m["quarantined_count"] == 0 and m["quarantined_by_reason"] == {}
    assert m["label_names"] == [str(k) for k in range(10)]
    assert sum(s["count"] for s in m["splits"].values()) == 300


def test_jpeg_at_another_size_decodes_to_the_configured_size(spark, tmp_path):
    cfg = _cfg(IMAGES, tmp_path)
    synthetic.run(spark, cfg, synthetic.Options(rows=40, image_format="jpeg", image_size=(48, 40), classes=4))
    files = _files(cfg.resolve(cfg.dataset.source))
    assert len(files) == 40 and all(n.endswith(".jpg") for n in files)
    assert {n.split("/")[0] for n in files} <= {"0", "1", "2", "3"}
    assert Image.open(io.BytesIO(next(iter(files.values())))).size == (40, 48)  # PIL: (width, height)
    spec = ImageSpec.from_conf(cfg.dataset.image)  # what preprocess decodes with
    assert {decode_image(data, spec).shape for data in files.values()} == {(32, 32, 3)}


def test_held_out_images_are_flat_unlabelled_and_new(spark, image_lake, tmp_path):
    cfg, _ = image_lake
    held = _cfg(IMAGES, tmp_path)
    s = synthetic.run(spark, held, synthetic.Options(rows=50, score_date=DATE))
    files = _files(s["uri"])
    assert s["uri"].endswith(f"raw/synthetic_images/incoming/dt={DATE}")
    assert len(files) == 50 and all("/" not in n for n in files)
    header, truth = _csv_rows(s["truth_uri"])
    assert header == ["path", "label"] and sorted(r[0] for r in truth) == sorted(files)
    labelled = set(_files(cfg.resolve(cfg.dataset.source)).values())
    assert not labelled & set(files.values())  # a separate random stream, not copies


def test_existing_output_needs_overwrite(spark, image_lake):
    cfg, _ = image_lake
    with pytest.raises(FileExistsError, match="--overwrite"):
        synthetic.run(spark, cfg, synthetic.Options(rows=5))
    with pytest.raises(ValueError, match="--classes"):
        synthetic.run(spark, cfg, synthetic.Options(rows=5, classes=21, overwrite=True))


@pytest.fixture(scope="module")
def tabular_lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_tabular")
    cfg = _cfg(TABULAR, root, "preprocess.files_per_split=1")
    args = cli.parser("test")
    synthetic.add_args(args)
    synthetic.main(spark, cfg, args.parse_args(["--config", TABULAR, "--rows", "400", "--partitions", "3"]))
    return cfg


def test_tabular_columns_match_the_config(tabular_lake):
    cfg = tabular_lake
    tab = cfg.dataset.tabular
    header, rows = _csv_rows(cfg.resolve(cfg.dataset.source))
    assert header == tab.columns()
    assert len(rows) == 400 and len({r[0] for r in rows}) == 400
    labels = [r[1] for r in rows]
    assert set(labels) == {"0", "1", "2"} and min(labels.count(k) for k in "012") > 60
    cats = [r[header.index("region")] for r in rows]
    assert set(cats) <= {f"v{k}" for k in range(8)} and cats.count("v0") > cats.count("v7")  # skewed
    values = np.array([[float(v) for v in r[2:22]] for r in rows])
    assert np.isfinite(values).all() and (values.std(axis=0) > 0).all()


def test_tabular_rows_do_not_depend_on_partitioning(spark, tabular_lake, tmp_path):
    cfg = tabular_lake
    again = _cfg(TABULAR, tmp_path)
    synthetic.run(spark, again, synthetic.Options(rows=400, partitions=2))
    assert sorted(_csv_rows(again.resolve(again.dataset.source))[1]) == \
        sorted(_csv_rows(cfg.resolve(cfg.dataset.source))[1])


def test_preprocess_accepts_synthetic_table(spark, tabular_lake):
    cfg = tabular_lake
    m = preprocess.run(spark, cfg).manifest
    assert m["input_count"] == 400 == m["output_count"]
    assert m["quarantined_count"] == 0
    assert m["label_names"] == ["0", "1", "2"]
    assert m["tabular"]["num_features"] == 20 + 2 * (8 + 1)


def test_held_out_table_has_no_label(spark, tabular_lake, tmp_path):
    held = _cfg(TABULAR, tmp_path)
    s = synthetic.run(spark, held, synthetic.Options(rows=120, score_date=DATE))
    header, rows = _csv_rows(s["uri"])
    assert header == [c for c in held.dataset.tabular.columns() if c != "label"] and len(rows) == 120
    t_header, truth = _csv_rows(s["truth_uri"])
    assert t_header == ["path", "label"] and sorted(r[0] for r in truth) == sorted(r[0] for r in rows)
