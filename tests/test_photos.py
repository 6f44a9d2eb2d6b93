"""Synthetic photos (``--style photos``): sizes, determinism, a learnable signal; JPEG draft mode
against a plain full decode + resize; a few photos preprocessed to 224x224x3."""
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ROOT
from pipeline import preprocess
from pipeline.core import lake
from pipeline.core.config import load_config
from pipeline.ingest.images import ImageSpec, decode_image
from pipeline.samples import synthetic

PHOTOS = str(ROOT / "conf" / "synthetic_photos.yaml")


def _photo(i: int, noise: float = 0.15, sides=synthetic.PHOTO_SIDES, classes: int = 10) -> tuple[int, np.ndarray]:
    return synthetic.render_photo(i, 0, synthetic.LABELLED, classes, 3, noise, sides)


def test_photos_are_256_to_512_px_deterministic_and_vary_in_size():
    shapes = {_photo(i)[1].shape for i in range(30)}
    assert all(256 <= h <= 512 and 256 <= w <= 512 and c == 3 for h, w, c in shapes)
    assert len(shapes) > 20  # sizes drawn per photo
    label, arr = _photo(7)
    label2, arr2 = _photo(7)
    assert label == label2 and np.array_equal(arr, arr2)
    assert not np.array_equal(arr, synthetic.render_photo(7, 1, synthetic.LABELLED, 10, 3, 0.15)[1])


def test_photo_classes_differ_in_colour_and_texture():
    """Class mean colours differ (a nearest-class-mean rule on each photo's mean colour, fitted
    on 300 photos, labels 200 others at >= 0.9 against 0.1 by chance), and classes of one colour
    family differ in texture: the grating's orientation shows in the image gradients."""
    colour, labels = [], []
    for i in range(500):
        label, arr = _photo(i, sides=(64, 64))
        colour.append(arr.reshape(-1, 3).mean(axis=0))
        labels.append(label)
    x, y = np.array(colour), np.array(labels)
    means = np.array([x[:300][y[:300] == k].mean(axis=0) for k in range(10)])
    nearest = np.argmin(((x[300:, None] - means[None]) ** 2).sum(axis=2), axis=1)
    assert (nearest == y[300:]).mean() >= 0.9

    def orientation(arr):  # the grating's direction: of the mean gradient outer product
        g = arr.astype(np.float64).mean(axis=2)
        gy, gx = np.gradient(g)
        return 0.5 * np.arctan2(2 * (gx * gy).mean(), ((gx * gx) - (gy * gy)).mean()) % np.pi

    by_class: dict[int, list] = {}
    for i in range(200):
        label, arr = synthetic.render_photo(i, 0, synthetic.LABELLED, 2, 3, 0.0, (96, 96))
        by_class.setdefault(label, []).append(orientation(arr))
    # Class 0's grating runs along one axis, class 1's 36 degrees from it.
    assert abs(np.median(by_class[1]) - np.median(by_class[0])) > 0.4


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_draft_mode_stays_within_tolerance_of_a_full_decode(resize):
    """Draft mode decodes >= 448 px JPEGs at 1/2 scale in the DCT; against a full decode + the
    same resize, a 224x224 result may differ by at most 3 levels of 255 on average on clean
    photos and 8 with the generator's pixel noise, and each channel's mean by at most 0.5 / 2."""
    full = ImageSpec(224, 224, 3, resize, 10**8, draft=False)
    draft = ImageSpec(224, 224, 3, resize, 10**8, draft=True)
    for noise, mean_tol, channel_tol in ((0.0, 3.0, 0.5), (0.15, 8.0, 2.0)):
        for i in range(3):
            data = synthetic.encode_image(_photo(i, noise, sides=(448, 512))[1], "jpeg")
            a = decode_image(data, full).astype(np.float64)
            b = decode_image(data, draft).astype(np.float64)
            assert a.shape == b.shape == (224, 224, 3)
            assert 0 < np.abs(a - b).mean() <= mean_tol  # > 0: draft mode did decode at a smaller scale
            assert np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).max() <= channel_tol
    small = synthetic.encode_image(_photo(0, sides=(300, 440))[1], "jpeg")  # no side >= 448: no draft
    assert np.array_equal(decode_image(small, full), decode_image(small, draft))
    png = synthetic.encode_image(_photo(0, sides=(480, 480))[1], "png")  # only JPEGs have a draft mode
    assert np.array_equal(decode_image(png, full), decode_image(png, draft))


def test_a_few_photos_preprocess_to_224_px(spark, tmp_path):
    cfg = load_config(PHOTOS, [f"lake.root={tmp_path}", "preprocess.files_per_split=1", "tracking.enabled=false"])
    s = synthetic.run(spark, cfg, synthetic.Options(rows=12, style="photos", image_format="jpeg", partitions=2))
    assert s["sides"] == [256, 512] and s["rows"] == 12
    files = sorted(Path(lake.local_path(cfg.resolve(cfg.dataset.source))).rglob("*.jpg"))
    sizes = {Image.open(io.BytesIO(f.read_bytes())).size for f in files}
    assert len(files) == 12 and len(sizes) > 1 and all(256 <= v <= 512 for wh in sizes for v in wh)
    m = preprocess.run(spark, cfg).manifest
    assert m["input_count"] == 12 == m["output_count"] and m["quarantined_count"] == 0
    assert m["image"] == {"height": 224, "width": 224, "channels": 3, "resize": "stretch",
                          "max_pixels": 40_000_000, "draft": True}
    rows = [r for split in ("train", "val", "test")
            for p in Path(lake.local_path(f"{m['uri']}/{split}")).glob("*.parquet")
            for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 12
    spec = ImageSpec.from_conf(cfg.dataset.image)
    for r in rows[:3]:  # the stored blob is what decode_image gives for the file
        assert r["image"] == decode_image(Path(r["path"].removeprefix("file:")).read_bytes(), spec).tobytes()
    assert {len(r["image"]) for r in rows} == {224 * 224 * 3}
