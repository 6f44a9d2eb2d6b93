import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.ingest import images
from pipeline.ingest.images import ImageSpec, Rejected, decode_image, images_to_tensor_layout

from conftest import png_bytes

GRAY = ImageSpec(8, 8, 1, "stretch", 10_000)
RGB = ImageSpec(8, 8, 3, "stretch", 10_000)


def test_png_round_trips_exactly():
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    out = decode_image(png_bytes(arr), GRAY)
    assert out.shape == (8, 8, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], arr)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1"])
def test_any_mode_converts_to_configured_channels(mode):
    from PIL import Image
    import io

    img = Image.new(mode, (16, 12), color=1 if mode in ("1", "P", "L") else (200,) * len(mode))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), GRAY).shape == (8, 8, 1)
    assert decode_image(buf.getvalue(), RGB).shape == (8, 8, 3)


def test_jpeg_decodes():
    rgb = np.full((20, 30, 3), 128, np.uint8)
    out = decode_image(png_bytes(rgb, fmt="JPEG"), RGB)
    assert out.shape == (8, 8, 3) and abs(int(out.mean()) - 128) <= 2


@pytest.mark.parametrize("policy", ["stretch", "crop", "pad"])
def test_resize_policies(policy):
    wide = np.full((10, 40), 255, np.uint8)  # a white 4:1 strip
    out = decode_image(png_bytes(wide), ImageSpec(8, 8, 1, policy, 10_000))[..., 0]
    if policy == "pad":  # letterboxed: black bars above and below
        assert out[0].max() == 0 and out[4].min() == 255
    else:
        assert out.min() == 255


@pytest.mark.parametrize("data, reason", [
    (b"", images.EMPTY_FILE),
    (b"this is a text file, not a png", images.NOT_AN_IMAGE),
])
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejected) as e:
        decode_image(data, GRAY)
    assert e.value.reason == reason


def test_truncated_file():
    data = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(Rejected) as e:
        decode_image(data[: len(data) // 2], GRAY)
    assert e.value.reason == images.TRUNCATED


def test_pixel_limit_checked_before_decoding():
    data = png_bytes(np.zeros((200, 200), np.uint8))
    with pytest.raises(Rejected) as e:
        decode_image(data, ImageSpec(8, 8, 1, "stretch", 10_000))
    assert e.value.reason == images.TOO_MANY_PIXELS and "40000 pixels" in e.value.detail


def test_unsupported_mode():
    data = png_bytes(np.zeros((8, 8), np.uint16) + 1000)  # 16-bit grayscale
    with pytest.raises(Rejected) as e:
        decode_image(data, GRAY)
    assert e.value.reason == images.UNSUPPORTED_MODE


def test_write_splits_writes_good_images_and_returns_counts_sums_and_bad_rows(tmp_path):
    from pipeline.ingest.image_tasks import write_splits

    src = tmp_path / "src"
    src.mkdir()
    files = {"a.png": png_bytes(np.full((8, 8), 51, np.uint8)), "b.png": b"",
             "c.png": png_bytes(np.full((8, 8), 102, np.uint8)), "d.png": png_bytes(np.zeros((8, 8), np.uint8))}
    for name, data in files.items():
        (src / name).write_bytes(data)
    plan = pd.DataFrame({"uri": [f"file://{src}/{n}" for n in files], "path": [f"file:{src}/{n}" for n in files],
                         "id": list(files), "label_name": ["x", "x", "y", None],
                         "split": ["train", "train", "train", "val"]})
    out = pd.concat(list(write_splits(iter([plan]), GRAY, {s: f"file://{tmp_path}/out/{s}" for s in ("train", "val", "test")},
                                     ["x", "y"], 1 << 20, part=3, drift_uri=f"file://{tmp_path}/drift")))

    bad = out[out["reason"].notna()].set_index("source")
    assert bad.loc[f"file:{src}/b.png", "reason"] == images.EMPTY_FILE
    assert bad.loc[f"file:{src}/d.png", "reason"] == "missing_label"
    good = out[out["reason"].isna()].set_index("label_name")
    assert good["n"].to_dict() == {"x": 1, "y": 1} and set(good["split"]) == {"train"}
    sums = [v for v in good["px_sum"] if v is not None]  # the split's sums ride on one row
    assert len(sums) == 1 and sums[0] == [pytest.approx(64 * (51 + 102) / 255)]

    table = pq.read_table(tmp_path / "out" / "train" / "part-00003.parquet")
    assert table.column("id").to_pylist() == ["a.png", "c.png"] and table.column("label").to_pylist() == [0, 1]
    batch = images_to_tensor_layout(table.column("image").to_pylist(), GRAY)
    assert batch.shape == (2, 1, 8, 8) and (batch[0] == 51).all() and (batch[1] == 102).all()
    assert not (tmp_path / "out" / "val").exists()  # no good rows there, so no file
    assert [p.name for p in (tmp_path / "out" / "train").iterdir()] == ["part-00003.parquet"]  # no temporaries
    # The train images' drift features (gray_mean, gray_std), staged for the reference.
    stats = pq.read_table(tmp_path / "drift" / "part-00003.parquet").to_pydict()
    assert stats == {"f0": [pytest.approx(51 / 255), pytest.approx(102 / 255)], "f1": [pytest.approx(0, abs=1e-6)] * 2}
