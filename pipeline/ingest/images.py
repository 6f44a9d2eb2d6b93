"""Image decoding shared by preprocess (training data) and score (new data).

One function turns raw file bytes into a fixed-size uint8 HxWxC array or a quarantine reason,
so training and serving cannot decode differently.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

# Reason codes written to the quarantine; stable strings, documented in the README.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated_image"
TOO_MANY_PIXELS = "too_many_pixels"
UNSUPPORTED_MODE = "unsupported_mode"

# Modes PIL can convert to L/RGB without losing meaning. 16/32-bit integer and float images
# would need a scaling decision we do not guess at.
SUPPORTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}


@dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int
    channels: int
    resize: str
    max_pixels: int
    draft: bool = False  # JPEG draft mode (ImageConf.draft); False for a model spec written before it

    @classmethod
    def from_conf(cls, image_conf) -> "ImageSpec":
        c = image_conf
        return cls(c.height, c.width, c.channels, c.resize, c.max_pixels, c.draft)

    @classmethod
    def from_dict(cls, img: dict) -> "ImageSpec":
        """From a manifest's or model spec's ``image`` entry."""
        return cls(img["height"], img["width"], img["channels"], img["resize"], img["max_pixels"],
                   bool(img.get("draft", False)))

    @property
    def num_bytes(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True)
class ImageLayout:
    """Just the shape of a stored image blob."""
    height: int
    width: int
    channels: int


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def decode_image(data: bytes, spec: ImageSpec) -> np.ndarray:
    """Decode, convert and resize one image to uint8 (H, W, C). Raises Rejected."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise Rejected(EMPTY_FILE, "file has 0 bytes")
    try:
        # Opening reads only the header, so the pixel check runs before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        if isinstance(e, UnidentifiedImageError):
            raise Rejected(NOT_AN_IMAGE, "not a recognised image format") from None
        raise Rejected(TOO_MANY_PIXELS, str(e)) from None
    w, h = img.size
    if w * h > spec.max_pixels:
        raise Rejected(TOO_MANY_PIXELS, f"{w}x{h} = {w * h} pixels > dataset.image.max_pixels={spec.max_pixels}")
    if img.mode not in SUPPORTED_MODES:
        raise Rejected(UNSUPPORTED_MODE, f"mode {img.mode!r} not in {sorted(SUPPORTED_MODES)}")
    if spec.draft and img.format == "JPEG":
        # The decoder scales by 1/2, 1/4 or 1/8 in the DCT while both sides stay >= the target:
        # a 512 px photo going to 224 decodes a quarter of the pixels (bench/README.md, photos).
        img.draft(None, (spec.width, spec.height))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise Rejected(TRUNCATED, f"decode failed: {e}") from None

    target_mode = "L" if spec.channels == 1 else "RGB"
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite onto black so transparent pixels do not carry arbitrary colours.
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert(target_mode)

    size = (spec.width, spec.height)
    if img.size != size:
        if spec.resize == "crop":
            img = ImageOps.fit(img, size, method=Image.Resampling.BILINEAR)
        elif spec.resize == "pad":
            img = ImageOps.pad(img, size, method=Image.Resampling.BILINEAR, color=0)
        else:
            img = img.resize(size, Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(spec.height, spec.width, spec.channels)


def images_to_tensor_layout(image_col, spec: ImageSpec | ImageLayout) -> np.ndarray:
    """A column of HxWxC uint8 blobs -> one (N, C, H, W) uint8 array, with one join, no per-row copy.

    The column is a sequence of bytes objects (Petastorm's reader), or the blobs already viewed
    as one (N, H*W*C) uint8 array (``pipeline.training.feed``'s pyarrow reader): then nothing is copied.
    """
    if isinstance(image_col, np.ndarray) and image_col.dtype == np.uint8 and image_col.ndim == 2:
        flat = image_col
    else:
        flat = np.frombuffer(b"".join(image_col), dtype=np.uint8)
    return flat.reshape(-1, spec.height, spec.width, spec.channels).transpose(0, 3, 1, 2)


CHANNEL_NAMES = {1: ("gray",), 3: ("red", "green", "blue")}


def stat_names(channels: int) -> list[str]:
    """The drift features of an image, in ``channel_stats``' order: each channel's mean, then each
    channel's standard deviation (``gray_mean, gray_std``; ``red_mean, green_mean, blue_mean, red_std, ...``)."""
    names = CHANNEL_NAMES.get(channels) or tuple(f"channel_{c}" for c in range(channels))
    return [f"{n}_mean" for n in names] + [f"{n}_std" for n in names]


def channel_stats(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, C, H, W) (or (N, C, H*W)) at the model's input size -> (N, 2C) float64: each channel's
    mean, then each channel's standard deviation, in [0, 1] units. Preprocess (the train split's
    reference) and scoring (each scored image) call this on the same decoded arrays, so the two
    cannot disagree."""
    n, c = images.shape[:2]
    # From each image's histogram per channel (one bincount, channels offset by 256): exact counts,
    # and several times faster than float means and deviations over the pixels.
    last = np.moveaxis(images, 1, -1)  # channels last: how the decoded arrays lie in memory, so no copy
    offsets = np.arange(c, dtype=np.intp) * 256
    hist = np.empty((n, c, 256))
    for i in range(n):  # one image at a time: the indexes of a whole batch of large images would be large
        hist[i] = np.bincount((last[i].reshape(-1, c) + offsets).ravel(), minlength=256 * c).reshape(c, 256)
    v = np.arange(256) / 255.0
    pixels = int(np.prod(images.shape[2:]))
    mean = hist @ v / pixels
    var = hist @ (v * v) / pixels - mean * mean
    return np.concatenate([mean, np.sqrt(np.maximum(var, 0.0))], axis=1)
