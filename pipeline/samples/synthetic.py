"""Synthetic raw datasets of any size, generated on Spark in parallel, with a learnable signal.

    python -m pipeline.samples.synthetic --config conf/synthetic_images.yaml  --rows 100000 [--partitions 64]
    python -m pipeline.samples.synthetic --config conf/synthetic_tabular.yaml --rows 5000000
    python -m pipeline.samples.synthetic --config conf/synthetic_images.yaml  --rows 2000 --score-date 2026-01-15
    python -m pipeline.samples.synthetic --config conf/synthetic_photos.yaml  --rows 2500 --style photos
      [--seed 0] [--classes K] [--noise X] [--image-format png|jpeg] [--image-size HxW]
      [--overwrite] [--set key=value ...]

Writes the raw layout preprocess reads, under ``dataset.source`` (relative to ``lake.root``):

images   ``<source>/<class>/<id>.png`` (or ``.jpg``), ``dataset.image.channels`` channels, sized
         ``dataset.image.height`` x ``width`` unless ``--image-size`` asks for a different raw size
         (preprocess then resizes). Class k is a bright shape (square, disk, ring, horizontal or
         vertical bar: k mod 5) near one of four anchor points (k div 5) on a noisy, tinted
         background, with random colour, size and position jitter. At most 20 classes. (With
         the defaults, logistic regression on raw pixels reaches about 0.85 from 2,400 images;
         a CNN does better.)
         With ``--style photos``: JPEG photos (unless ``--image-format png``) whose height and
         width are each drawn from 256-512 pixels, so preprocess downscales every one (to
         224x224 with ``conf/synthetic_photos.yaml``). Class k is a texture and a colour: a
         sinusoidal grating at one of five orientations (k mod 5) and one of four frequencies
         (k div 5, in cycles per image, so a resize keeps it), in a class hue (k / classes)
         against its complement, with jittered orientation, frequency, phase, hue and contrast
         and pixel noise.
tabular  CSV files with a header (or ``dataset.tabular.format``) whose columns are exactly
         ``dataset.tabular``'s: id, label, the numeric columns (Gaussian, each with its own
         offset and scale), the categorical columns (skewed values ``v0``, ``v1``, ... from a
         hash of the id) and any ``ignore`` columns. The label is the argmax of K noisy linear
         scores of the standardised numerics (about 60% of them informative) plus a
         per-category effect, so no model reaches 1.0: with the default noise, logistic
         regression reaches about 0.86.

``--score-date YYYY-MM-DD`` writes, instead of the labelled set, ``--rows`` new unlabelled
records (drawn from a separate random stream) under ``<dataset.score_source>/dt=<date>/``
(images in one flat folder; tabular without the label column) and their true labels under
``raw/<dataset>/holdout_labels/dt=<date>/`` (``path,label`` CSV).

Every record is a pure function of (``--seed``, stream, row id): the same rows give the same
bytes on any number of partitions. Image tasks render and write their own files through
``pipeline.core.lake`` and return only a count per partition; tabular data is pure Spark column
expressions. Nothing but those counts reaches the driver, so its memory does not grow with
``--rows``. ``_synthetic.json`` (options, counts, resolved config) is written next to the data;
preprocess skips it (Spark ignores files starting with ``_``).
"""
from __future__ import annotations

import argparse
import io
import logging
import math
from dataclasses import asdict, dataclass
from datetime import date
from functools import partial
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.core import lake
from pipeline.core.config import Config
from pipeline.core.layout import LakeLayout

log = logging.getLogger(__name__)

LABELLED, HELD_OUT = 0, 1  # random streams: held-out records are new draws, not copies
SHAPES = ("square", "disk", "ring", "hbar", "vbar")
ANCHORS = ((0.3, 0.3), (0.7, 0.7), (0.3, 0.7), (0.7, 0.3))  # (row, column) as fractions
MAX_IMAGE_CLASSES = len(SHAPES) * len(ANCHORS)
EXTENSIONS = {"png": "png", "jpeg": "jpg"}
STYLES = ("shapes", "photos")
PHOTO_SIDES = (256, 512)                       # each side of a photo, drawn per image, inclusive
PHOTO_FREQUENCIES = (5.0, 9.0, 14.0, 20.0)     # grating cycles per image, one per group of five classes
MARKER = "_synthetic.json"
# What the generator makes for each kind of dataset it can make (pipeline.kinds names).
DEFAULT_CLASSES = {"images": 10, "tabular": 3}
MAX_CLASSES = {"images": MAX_IMAGE_CLASSES, "tabular": 100}
DEFAULT_NOISE = {"images": 0.15, "tabular": 0.35}
IMAGES_PER_PARTITION = 2_000
ROWS_PER_PARTITION = 500_000


@dataclass(frozen=True)
class Options:
    rows: int
    partitions: int | None = None  # None: from the row count and the cluster's parallelism
    seed: int = 0
    classes: int | None = None     # None: DEFAULT_CLASSES[kind]
    noise: float | None = None     # None: DEFAULT_NOISE[kind]
    image_format: str = "png"
    jpeg_quality: int = 90
    image_size: tuple[int, int] | None = None  # raw (height, width); None: dataset.image's
    style: str = "shapes"          # shapes: fixed-size shapes; photos: 256-512 px textures (PHOTO_SIDES)
    categories: int = 8            # values per categorical column
    score_date: str | None = None  # set: write the held-out set for this date instead
    overwrite: bool = False


# --- images: one pure function of (seed, stream, id), rendered and written on executors ------

def record_name(i: int) -> str:
    return f"{i:010d}"


def render_image(i: int, seed: int, stream: int, classes: int, height: int, width: int,
                 channels: int, noise: float) -> tuple[int, np.ndarray]:
    """(class, uint8 array of shape (height, width, channels)) for record i."""
    rng = np.random.default_rng([seed, stream, i])
    label = int(rng.integers(classes))
    shape, (ay, ax) = SHAPES[label % len(SHAPES)], ANCHORS[label // len(SHAPES)]
    y = (np.arange(height)[:, None] + 0.5) / height - (ay + rng.uniform(-0.08, 0.08))
    x = (np.arange(width)[None, :] + 0.5) / width - (ax + rng.uniform(-0.08, 0.08))
    r = rng.uniform(0.11, 0.17)
    if shape == "square":
        mask = (np.abs(y) <= r) & (np.abs(x) <= r)
    elif shape == "disk":
        mask = y * y + x * x <= r * r
    elif shape == "ring":
        d2 = y * y + x * x
        mask = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    elif shape == "hbar":
        mask = (np.abs(y) <= 0.35 * r) & (np.abs(x) <= 1.5 * r)
    else:
        mask = (np.abs(y) <= 1.5 * r) & (np.abs(x) <= 0.35 * r)
    background = rng.uniform(0.1, 0.4, channels)
    colour = rng.uniform(0.65, 1.0, channels)
    img = np.where(mask[:, :, None], colour, background) + noise * rng.standard_normal((height, width, channels))
    return label, (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _hue_rgb(h: float) -> np.ndarray:
    """A saturated colour of hue h in [0, 1) (the HSV hexcone at full saturation and value)."""
    return np.clip(np.abs(((h * 6.0 + np.array([0.0, 4.0, 2.0])) % 6.0) - 3.0) - 1.0, 0.0, 1.0)


def render_photo(i: int, seed: int, stream: int, classes: int, channels: int, noise: float,
                 sides: tuple[int, int] = PHOTO_SIDES) -> tuple[int, np.ndarray]:
    """(class, uint8 array of shape (height, width, channels)) for record i, its sides drawn from
    ``sides``; the class is a grating's orientation and frequency and a hue (module docstring)."""
    rng = np.random.default_rng([seed, stream, i])
    label = int(rng.integers(classes))
    height, width = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
    theta = np.pi * (label % 5) / 5 + rng.uniform(-0.12, 0.12)
    cycles = PHOTO_FREQUENCIES[label // 5 % len(PHOTO_FREQUENCIES)] * rng.uniform(0.9, 1.1)
    # Coordinates in image units (0-1 on each side), so the texture survives any resize.
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    phase = 2 * np.pi * cycles * (x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta)))
    g = (0.5 + 0.5 * np.sin(phase + np.float32(rng.uniform(0, 2 * np.pi))))[:, :, None]
    hue = label / classes + rng.uniform(-0.03, 0.03)
    fg = _hue_rgb(hue % 1.0) * rng.uniform(0.7, 1.0)
    bg = _hue_rgb((hue + 0.5) % 1.0) * rng.uniform(0.15, 0.35)
    if channels == 1:
        fg, bg = fg.mean(keepdims=True), bg.mean(keepdims=True)
    img = bg.astype(np.float32) + (fg - bg).astype(np.float32) * g
    img += np.float32(noise) * rng.standard_normal((height, width, channels), dtype=np.float32)
    return label, (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_image(arr: np.ndarray, image_format: str, jpeg_quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")
    if image_format == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def write_image_partition(batches: Iterator[pd.DataFrame], out_uri: str, truth_uri: str | None, seed: int,
                          stream: int, classes: int, height: int, width: int, channels: int, noise: float,
                          image_format: str, jpeg_quality: int, style: str = "shapes") -> Iterator[pd.DataFrame]:
    """mapInPandas body: row ids in, one (files, bytes) row per partition out.

    Labelled images go to ``<out>/<class>/<id>.<ext>``; with ``truth_uri`` (held-out set) to
    ``<out>/<id>.<ext>`` and the labels to one ``path,label`` CSV per partition under truth_uri.
    """
    from pyspark import TaskContext

    ext = EXTENSIONS[image_format]
    files = nbytes = 0
    truth: list[str] = []
    for pdf in batches:
        for i in pdf["id"].tolist():
            if style == "photos":
                label, arr = render_photo(i, seed, stream, classes, channels, noise)
            else:
                label, arr = render_image(i, seed, stream, classes, height, width, channels, noise)
            data = encode_image(arr, image_format, jpeg_quality)
            name = f"{record_name(i)}.{ext}"
            if truth_uri is None:
                lake.write_bytes(f"{out_uri}/{label}/{name}", data)
            else:
                lake.write_bytes(f"{out_uri}/{name}", data)
                truth.append(f"{name},{label}\n")
            files += 1
            nbytes += len(data)
    if truth:
        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
        lake.write_bytes(f"{truth_uri}/part-{part:05d}.csv", ("path,label\n" + "".join(truth)).encode())
    yield pd.DataFrame({"files": [files], "bytes": [nbytes]})


def generate_images(spark: SparkSession, cfg: Config, opts: Options, out_uri: str,
                    truth_uri: str | None) -> dict[str, int]:
    img = cfg.dataset.image
    height, width = opts.image_size or (img.height, img.width)
    classes, noise = _classes(cfg, opts), _noise(cfg, opts)
    stream = LABELLED if truth_uri is None else HELD_OUT
    partitions = opts.partitions or max(spark.sparkContext.defaultParallelism,
                                        math.ceil(opts.rows / IMAGES_PER_PARTITION))
    body = partial(write_image_partition, out_uri=out_uri, truth_uri=truth_uri, seed=opts.seed, stream=stream,
                   classes=classes, height=height, width=width, channels=img.channels, noise=noise,
                   image_format=opts.image_format, jpeg_quality=opts.jpeg_quality, style=opts.style)
    written = (spark.range(opts.rows, numPartitions=partitions)
               .mapInPandas(body, "files long, bytes long")
               .agg(F.sum("files").alias("files"), F.sum("bytes").alias("bytes")).first())
    assert written is not None  # a global aggregate has exactly one row
    files = int(written["files"] or 0)
    if files != opts.rows:
        raise RuntimeError(f"synthetic images: {files} files written for {opts.rows} rows under {out_uri}")
    size: dict[str, Any] = ({"sides": list(PHOTO_SIDES)} if opts.style == "photos"
                            else {"height": height, "width": width})
    return {"rows": files, "bytes": int(written["bytes"] or 0), "partitions": partitions,
            "classes": classes, **size, "channels": img.channels}


# --- tabular: Spark column expressions, each value a hash of (seed, stream, column, id) -------

def _uniform(seed: int, stream: int, key: str, rid: Column) -> Column:
    """Uniform in (0, 1), a pure function of its arguments (so independent of partitioning)."""
    h = F.xxhash64(F.lit(seed), F.lit(stream), F.lit(key), rid)
    return (F.shiftrightunsigned(h, 11).cast("double") + 0.5) / float(1 << 53)


def _normal(seed: int, stream: int, key: str, rid: Column) -> Column:
    """Standard normal by Box-Muller from two independent uniforms."""
    u1, u2 = _uniform(seed, stream, key + "#1", rid), _uniform(seed, stream, key + "#2", rid)
    return F.sqrt(-2.0 * F.log(u1)) * F.cos(2.0 * math.pi * u2)


def tabular_frame(spark: SparkSession, cfg: Config, opts: Options, stream: int, partitions: int) -> DataFrame:
    """Columns exactly as dataset.tabular declares them (label included), values as described above."""
    tab = cfg.dataset.tabular
    classes, noise = _classes(cfg, opts), _noise(cfg, opts)
    # The "true model" is small and drawn on the driver from the seed alone.
    rng = np.random.default_rng([opts.seed, 7919])
    d = len(tab.numeric)
    offset, scale = rng.uniform(-50, 50, d).round(2), np.exp(rng.uniform(-2, 4, d)).round(3)
    informative = rng.random(d) < 0.6  # the rest are pure noise features
    weights = rng.normal(0.0, 1.0, (classes, d)) * informative / math.sqrt(max(informative.sum(), 1))
    effects = {c: rng.normal(0.0, 0.5, (classes, opts.categories)) for c in tab.categorical}

    rid = F.col("id")
    base = spark.range(opts.rows, numPartitions=partitions).select(
        rid,
        *[_normal(opts.seed, stream, f"num:{c}", rid).alias(f"_z{j}") for j, c in enumerate(tab.numeric)],
        # u^2 skews the values: v0 is the most frequent, as in real categorical data.
        *[F.floor(F.pow(_uniform(opts.seed, stream, f"cat:{c}", rid), 2) * opts.categories).cast("int")
          .alias(f"_c{j}") for j, c in enumerate(tab.categorical)],
        *[_normal(opts.seed, stream, f"noise:{k}", rid).alias(f"_e{k}") for k in range(classes)],
    )
    scores = []
    for k in range(classes):
        s = F.lit(0.0) + noise * F.col(f"_e{k}")
        for j in range(d):
            if weights[k, j] != 0.0:
                s = s + float(weights[k, j]) * F.col(f"_z{j}")
        for j, c in enumerate(tab.categorical):
            s = s + F.element_at(F.array(*[F.lit(float(e)) for e in effects[c][k]]), F.col(f"_c{j}") + 1)
        scores.append(s.alias(f"_s{k}"))
    scored = base.select("*", *scores)
    best = F.greatest(*[F.col(f"_s{k}") for k in range(classes)])
    label = F.lit(None).cast("string")
    for k in reversed(range(classes)):  # the first class with the top score
        label = F.when(F.col(f"_s{k}") == best, F.lit(str(k))).otherwise(label)
    return scored.select(
        F.format_string("%010d", rid).alias(tab.id_column),
        label.alias(tab.label_column),
        *[F.round(F.lit(float(offset[j])) + float(scale[j]) * F.col(f"_z{j}"), 4).alias(c)
          for j, c in enumerate(tab.numeric)],
        *[F.concat(F.lit("v"), F.col(f"_c{j}").cast("string")).alias(c) for j, c in enumerate(tab.categorical)],
        *[F.concat(F.lit(f"{c}-"), F.pmod(rid, F.lit(97)).cast("string")).alias(c) for c in tab.ignore],
    )


def generate_tabular(spark: SparkSession, cfg: Config, opts: Options, out_uri: str,
                     truth_uri: str | None) -> dict[str, int]:
    tab = cfg.dataset.tabular
    partitions = opts.partitions or max(spark.sparkContext.defaultParallelism,
                                        math.ceil(opts.rows / ROWS_PER_PARTITION))
    df = tabular_frame(spark, cfg, opts, LABELLED if truth_uri is None else HELD_OUT, partitions)
    data = df if truth_uri is None else df.drop(tab.label_column)
    writer = data.write.mode("overwrite")
    if tab.format == "csv":
        writer.option("header", True).csv(out_uri)
    elif tab.format == "json":
        writer.json(out_uri)
    else:
        writer.parquet(out_uri)
    if truth_uri is not None:
        (df.select(F.col(tab.id_column).alias("path"), F.col(tab.label_column).alias("label"))
         .write.mode("overwrite").option("header", True).csv(truth_uri))
    return {"rows": opts.rows, "partitions": partitions, "classes": _classes(cfg, opts),
            "numeric": len(tab.numeric), "categorical": len(tab.categorical)}


# --- the command --------------------------------------------------------------------------

def run(spark: SparkSession, cfg: Config, opts: Options) -> dict[str, Any]:
    """Write the labelled set (or, with opts.score_date, the held-out set); returns the summary."""
    _check(cfg, opts)
    ds = cfg.dataset
    if opts.score_date:
        out = LakeLayout.dated(cfg.resolve(ds.score_source), opts.score_date)
        truth = LakeLayout.of(cfg).holdout_labels_dir(ds.name, opts.score_date)
    else:
        out, truth = cfg.resolve(ds.source), None
    for uri in [out, truth] if truth else [out]:
        if lake.listdir(uri):
            if not opts.overwrite:
                raise FileExistsError(f"{uri} is not empty; pass --overwrite to replace it, or choose another "
                                      f"lake.root / dataset.source")
            lake.remove(uri)
    log.info("synthetic %s (%s): %d rows -> %s", ds.name, ds.kind, opts.rows, out)
    generate = {"images": generate_images, "tabular": generate_tabular}[ds.kind]
    counts = generate(spark, cfg, opts, out, truth)
    summary = {"uri": out, "truth_uri": truth, "kind": ds.kind, **counts,
               "options": asdict(opts), "config": cfg.to_dict()}
    lake.write_json(f"{out}/{MARKER}", summary)
    return summary


def _classes(cfg: Config, opts: Options) -> int:
    return opts.classes or DEFAULT_CLASSES[cfg.dataset.kind]


def _noise(cfg: Config, opts: Options) -> float:
    return DEFAULT_NOISE[cfg.dataset.kind] if opts.noise is None else opts.noise


def _check(cfg: Config, opts: Options) -> None:
    kind = cfg.dataset.kind
    if kind not in MAX_CLASSES:
        raise ValueError(f"synthetic data is made for dataset.kind {sorted(MAX_CLASSES)}, not {kind!r}")
    top = MAX_CLASSES[kind]
    if not 2 <= _classes(cfg, opts) <= top:
        raise ValueError(f"--classes must be between 2 and {top} for {kind}, got {opts.classes}")
    if opts.rows < 1 or (opts.partitions is not None and opts.partitions < 1):
        raise ValueError(f"--rows and --partitions must be >= 1, got {opts.rows} and {opts.partitions}")
    if _noise(cfg, opts) < 0:
        raise ValueError(f"--noise must be >= 0, got {opts.noise}")
    if opts.image_format not in EXTENSIONS:
        raise ValueError(f"--image-format must be one of {sorted(EXTENSIONS)}, got {opts.image_format!r}")
    if opts.style not in STYLES:
        raise ValueError(f"--style must be one of {list(STYLES)}, got {opts.style!r}")
    if opts.style == "photos" and opts.image_size is not None:
        raise ValueError(f"--image-size does not apply to --style photos (each side is drawn from {PHOTO_SIDES})")
    if not 1 <= opts.categories <= 10_000:
        raise ValueError(f"--categories must be between 1 and 10000, got {opts.categories}")


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 64x64, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"both sides must be >= 1, got {text!r}")
    return h, w


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=_positive, required=True, help="number of records (images or table rows)")
    p.add_argument("--partitions", type=_positive, help="Spark tasks (default: from --rows and the parallelism)")
    p.add_argument("--seed", type=int, default=0, help="the same seed and rows give the same bytes")
    p.add_argument("--classes", type=int, help="images: 2-20 (default 10); tabular: 2-100 (default 3)")
    p.add_argument("--noise", type=float, help="image pixel noise std in [0,1] units (default 0.15); "
                                               "tabular label-score noise (default 0.35)")
    p.add_argument("--style", choices=STYLES, default="shapes",
                   help="images: shapes at dataset.image's size, or photos (textures, 256-512 px per side)")
    p.add_argument("--image-format", choices=sorted(EXTENSIONS), help="default: jpeg for photos, png for shapes")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--image-size", type=_size, help="raw HEIGHTxWIDTH (default: dataset.image's); "
                                                    "preprocess resizes to dataset.image")
    p.add_argument("--categories", type=_positive, default=8, help="tabular: values per categorical column")
    p.add_argument("--score-date", type=_date, help="write the held-out, unlabelled set for this date instead")
    p.add_argument("--overwrite", action="store_true", help="replace existing output")


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(rows=args.rows, partitions=args.partitions, seed=args.seed, classes=args.classes,
                   noise=args.noise, jpeg_quality=args.jpeg_quality, image_size=args.image_size, style=args.style,
                   image_format=args.image_format or ("jpeg" if args.style == "photos" else "png"), categories=args.categories, score_date=args.score_date,
                   overwrite=args.overwrite)


def main(spark: SparkSession, cfg: Config, args: argparse.Namespace) -> None:
    s = run(spark, cfg, options_from_args(args))
    what = f"held-out set for dt={args.score_date}" if args.score_date else "labelled set"
    print(f"synthetic {s['kind']}: {s['rows']} records ({what}, {s['classes']} classes, "
          f"{s['partitions']} partitions) -> {s['uri']}")


if __name__ == "__main__":
    import sys

    from pipeline.spark import cli
    from pipeline.samples import synthetic  # by module name, so executors unpickle the task code by reference

    sys.exit(cli.run_job("synthetic", __doc__, synthetic.main, synthetic.add_args))
