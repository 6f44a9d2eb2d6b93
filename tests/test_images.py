import numpy as np
import pandas as pd
import pytest

from pipeline import images
from pipeline.images import ImageSpec, Rejected, decode_frames, decode_image, images_to_tensor_layout

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


def test_decode_frames_keeps_every_row_and_tensor_layout():
    good = png_bytes(np.full((8, 8), 51, np.uint8))
    pdf = pd.DataFrame({"path": ["a", "b", "c"], "content": [good, b"", good]})
    out = pd.concat(list(decode_frames(iter([pdf]), GRAY)))
    assert list(out["path"]) == ["a", "b", "c"]
    assert list(out["reason"]) == [None, images.EMPTY_FILE, None]
    assert out["px_sum"][0] == [pytest.approx(64 * 0.2)]
    batch = images_to_tensor_layout(out["image"][out["reason"].isna()], GRAY)
    assert batch.shape == (2, 1, 8, 8) and (batch == 51).all()
